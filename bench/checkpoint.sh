#!/usr/bin/env bash
# Checkpoint and restore of a VM: `feather checkpoint` / `feather restore` against the `criu`
# command line on the same process tree, with the same CRIU options. Run as root after
# ./setup.sh:
#
#   sudo bench/checkpoint.sh [ROUNDS] [MEGABYTES] [REDIS_MB]
#                               # defaults: 5 rounds, 64 MB held in memory, redis holding 256 MB
#
# Then the downtime of a migration: redis over the host's / holding REDIS_MB, with a client in
# the VM writing to it all the time, is migrated (`feather migrate`, post-copy and then
# stop-and-copy, both with the two-phase release) to a `feather serve` of a second state root on
# 127.0.0.1. The VM is frozen
# from the start of its checkpoint until the receiver says it runs there: `migrate` prints that
# time ("frozen for N ms"), and the script reports it with the archive's size and the writes
# the client made before and after. REDIS_MB=0 skips it.
#
# The VM runs over a scratch base (static busybox) and holds MEGABYTES in an awk string. The
# feather side includes everything a user waits for: the CLI, the keeper's round trip, state
# records, the restore keeper's mount namespace and cgroup. The criu side runs only what CRIU
# itself needs: `criu dump`, then `criu restore` from a shell that has mounted the VM's root.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
megabytes=${2:-64}
redis_mb=${3:-256}
feather=${FEATHER:-target/release/feather}
criu=${FEATHER_CRIU:-/usr/local/lib/feather/criu}
[[ -x $feather ]] || scripts/build-release
[[ -x $criu ]] || { echo "no CRIU at $criu: run ./setup.sh" >&2; exit 1; }

work=$(mktemp -d /tmp/feather-bench-checkpoint.XXXXXX)
root=$work/root
base=$work/base
f() { "$feather" --root "$root" "$@"; }
cleanup() {
    [[ -f $work/raw.pid ]] && kill -9 "$(cat "$work/raw.pid")" 2>/dev/null || true
    [[ -f $work/serve.pid ]] && kill "$(cat "$work/serve.pid")" 2>/dev/null || true
    f rm --force bench >/dev/null 2>&1 || true
    f rm --force redis >/dev/null 2>&1 || true
    "$feather" --root "$work/target" rm --force redis >/dev/null 2>&1 || true
    rm -rf "$work"
    # The registry's entries of this run's roots: every feather start reads every entry.
    grep -lF "\"dir\":\"$work/" /var/lib/feather-roots/*.json 2>/dev/null | xargs -r rm -f
}
trap cleanup EXIT

mkdir -p "$base"/{bin,proc,sys,dev,run,tmp,etc}
cp /bin/busybox "$base/bin/"
ln -s busybox "$base/bin/sh"
ln -s busybox "$base/bin/sleep"
f create bench --base "$base" --net none >/dev/null
f start bench
f exec bench -- sh -c "busybox awk 'BEGIN { s = sprintf(\"%$((megabytes << 20))s\", \"x\"); while (1) system(\"sleep 1\") }' </dev/null >/dev/null 2>&1 &"
sleep 1

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

: >"$work/feather.dump"; : >"$work/feather.restore"
for _ in $(seq "$rounds"); do
    t0=$(now); f checkpoint bench 2>/dev/null; t1=$(now); f restore bench; t2=$(now)
    ms "$t0" "$t1" >>"$work/feather.dump"; ms "$t1" "$t2" >>"$work/feather.restore"
done
images=$(du -sm "$root/vms/bench/checkpoint" | cut -f1)

# The same tree under plain criu: dumped from the running VM (its keeper then sees it end and
# records it stopped), restored by a shell that stays its parent, as a keeper would.
init=$(sed -n 's/.*"init_pid": \([0-9]*\).*/\1/p' "$root/vms/bench/state.json")
vm=$root/vms/bench
options=(--manage-cgroups=ignore --ext-mount-map auto --enable-external-sharing
    --enable-external-masters --tcp-established --file-locks)
unshare -m --propagation private bash -euo pipefail -c '
    criu=$1 work=$2 vm=$3 base=$4 init=$5 rounds=$6; shift 6
    mount -t overlay feather -o "lowerdir=$base,upperdir=$vm/upper,workdir=$vm/work,redirect_dir=off,metacopy=off,index=off,xino=off" "$vm/rootfs"
    now() { date +%s%N; }
    pid=$init
    for _ in $(seq "$rounds"); do
        rm -rf "$work/raw" "$work/raw.pid"; mkdir "$work/raw"
        t0=$(now)
        "$criu" dump --tree "$pid" --images-dir "$work/raw" --log-file dump.log "$@"
        t1=$(now)
        "$criu" restore --images-dir "$work/raw" --log-file restore.log --root "$vm/rootfs" \
            --pidfile "$work/raw.pid" --restore-detached --restore-sibling "$@"
        t2=$(now)
        pid=$(cat "$work/raw.pid")
        echo $(( (t1 - t0) / 1000000 )) >>"$work/criu.dump"
        echo $(( (t2 - t1) / 1000000 )) >>"$work/criu.restore"
    done
    kill -9 "$pid"; rm -f "$work/raw.pid"
' bench "$criu" "$work" "$vm" "$base" "$init" "$rounds" "${options[@]}"

fd=$(median <"$work/feather.dump"); fr=$(median <"$work/feather.restore")
cd_=$(median <"$work/criu.dump"); cr=$(median <"$work/criu.restore")
printf '%-10s %12s %12s %8s\n' "" "feather ms" "criu ms" ratio
printf '%-10s %12s %12s %8s\n' checkpoint "$fd" "$cd_" "$(awk -v a="$fd" -v b="$cd_" 'BEGIN { printf "%.2f", a / b }')"
printf '%-10s %12s %12s %8s\n' restore "$fr" "$cr" "$(awk -v a="$fr" -v b="$cr" 'BEGIN { printf "%.2f", a / b }')"
echo "images: ${images} MB for ${megabytes} MB held in memory (median of $rounds rounds)"

((redis_mb > 0)) || exit 0
# Migration downtime: redis with REDIS_MB under a steady write load, in each mode.
export FEATHER_MIGRATE_TOKEN=bench-$$-$RANDOM
writes() { "$feather" --root "$1" exec redis -- redis-cli -s /run/redis.sock INFO stats |
    sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p'; }
migrate_redis() {
    local mode=$1 port=$((20000 + ($$ + RANDOM) % 20000))
    f create redis --net none >/dev/null
    f start redis
    f exec redis -- sh -c "redis-server --port 0 --unixsocket /run/redis.sock --save '' --appendonly no \
        --daemonize yes --logfile /run/redis.log --enable-debug-command yes" >/dev/null
    until f exec redis -- redis-cli -s /run/redis.sock PING 2>/dev/null | grep -q PONG; do sleep 0.1; done
    keys=$((redis_mb * 1024 * 1024 / 1100))
    f exec redis -- redis-cli -s /run/redis.sock DEBUG POPULATE "$keys" key 1000 >/dev/null
    # The writer: one connection, one SET at a time, for as long as the VM lives.
    f exec redis -- sh -c "redis-benchmark -s /run/redis.sock -c 1 -n 2000000000 -r 100000 -t set -q \
        </dev/null >/dev/null 2>&1 &"
    sleep 2
    before=$(writes "$root")
    memory=$(f exec redis -- redis-cli -s /run/redis.sock INFO memory | sed -n 's/^used_memory_human:\(.*\)\r/\1/p')
    "$feather" --root "$work/target" serve --listen "127.0.0.1:$port" --once 2>"$work/serve.log" &
    echo $! >"$work/serve.pid"
    until grep -q listening "$work/serve.log"; do sleep 0.05; done
    t0=$(now)
    f migrate redis --to "127.0.0.1:$port" --mode "$mode" 2>"$work/migrate.log" ||
        { cat "$work/migrate.log" >&2; exit 1; }
    t1=$(now)
    wait "$(cat "$work/serve.pid")"; rm -f "$work/serve.pid"
    sleep 2
    after=$(writes "$work/target")
    frozen=$(sed -n 's/.*frozen for \([0-9]*\) ms.*/\1/p' "$work/migrate.log")
    sent=$(sed -n 's/.* \([0-9]*\) bytes,.*/\1/p' "$work/migrate.log")
    echo
    echo "migration ($mode) of redis holding $memory ($keys keys), one client writing all the time:"
    echo "  frozen ${frozen} ms (checkpoint, archive, transfer, restore, release); migrate took $(ms "$t0" "$t1") ms"
    echo "  archive $((sent >> 20)) MB; commands processed before: $before, 2 s after arriving: $after (the client goes on)"
    "$feather" --root "$work/target" rm --force redis >/dev/null
}
migrate_redis post-copy
migrate_redis stop-and-copy
