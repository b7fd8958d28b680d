"""feather's benchmarks: feather against its peers, side by side, in one run on one machine.

Run through `bench/run [--quick]`. Each comparison is one function below (`compare_start`,
`compare_exec`, ...): it measures with hyperfine (parsing its JSON export) or with the kernel's
own accounting (/proc/<pid>/smaps_rollup, the cgroup's memory files, /proc/meminfo) and adds a
section to the report, docs/benchmarks.md, with the targets from the issues stated beside the
results. A peer that cannot be installed or cannot run here is recorded with its exact error.
A timing never fails the run.

Everything the run makes lives under one folder in /tmp (feather's state root, scratch files,
the floor program) and is removed at the end, with every VM, mount and process it started.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "docs" / "benchmarks.md"
# Where cargo puts the builds: its own CARGO_TARGET_DIR when set, as cargo does.
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
MIB = 1024 * 1024

# Debian packages the run needs, and what for.
PACKAGES = {
    "hyperfine": "times the start, exec, network-namespace and file-job comparisons",
    "bubblewrap": "peer: bwrap",
    "firejail": "peer: firejail",
    "crun": "peer: crun on an OCI bundle",
    "podman": "peer: podman run --rootfs",
    "systemd-container": "peer: systemd-nspawn",
    "wrk": "HTTP load generator for the nginx throughput comparison",
    "nginx": "the server in the density and throughput comparisons",
    "rsync": "the reference for feather commit",
    "busybox-static": "the shell of the scratch base tree in the commit comparison",
    "util-linux": "unshare and nsenter, the namespace references",
    "chromium": "the browser that loads feather web's page in the web view comparison",
    "chromium-driver": "drives chromium for the web view comparison",
    "python3-selenium": "the driver's client library (Debian's python3)",
    "containerd": "the engine of the OCI runtime comparison (ctr run)",
    "runc": "the reference OCI runtime",
    "docker.io": "the engine of the OCI runtime comparison (docker run)",
}

# Run-time folders the peers make on the host on first use; removed at the end if this run
# made them (firejail leaves three bind mounts in its folder).
PEER_STATE = [Path("/run/firejail"), Path("/run/crun")]

# Targets, from the issues (issue 2: VM foundation, issue 4: services, issue 8: benchmarks).
START_TARGET = 1.5  # feather run --rm within 1.5x bwrap --unshare-all
POOL_SIZE = 4  # VMs made ahead in the pool row's state root (`feather pool --size`)
DENSITY_TIME_TARGET = 2.0  # issue 15: idle VMs brought up one after another, within 2x bwrap's
EXEC_TARGET = 1.2  # feather exec within 1.2x nsenter into the same namespaces (issue 15)
IDLE_MEMORY_TARGET = 1 * MIB  # an idle VM's keeper, init and spawner (issue 15)
SERVICE_MANAGER_TARGET = 2 * MIB  # issue 4: the service manager beside the services
RUNTIME_TARGET = 0.97  # in-VM throughput / host throughput
WEB_TABLE_TARGET = 0.300  # issue 18: the VM table of 100 VMs rendered within 300 ms
WEB_IDLE_TARGET = 0.01  # issue 18: the server's share of one core, idle, with 5 tabs open

# Firecracker's own numbers from its SPECIFICATION.md (firecracker-microvm/firecracker), for an
# i3.metal host, a 2-vCPU 256 MiB guest and its tuned guest kernel. Published, not measured.
FIRECRACKER_BOOT = "≤ 125 ms from the InstanceStart API call to the guest's /sbin/init"
FIRECRACKER_MEMORY = "≤ 5 MiB memory overhead of the VMM's threads"
FIRECRACKER_VMM_START = "the VMM process itself starts within 8 CPU ms (wall clock 6–60 ms)"

HTTP_PROBE = 'exec 3<>/dev/tcp/127.0.0.1/{port} && printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3 && head -c 15 <&3'
FILE_JOB = "find /usr/share -type f -print0 | head -z -n 20000 | xargs -0 cat | cksum"


@dataclass
class Plan:
    """How much each comparison does; --quick trims it to fit in two minutes."""

    quick: bool
    runs: int  # hyperfine runs per start/exec command
    rounds: int  # in how many turns those runs are taken
    warmup: int
    idle_vms: int
    nginx_vms: int  # 0: the nginx density is skipped
    wrk_seconds: int
    wrk_rounds: int
    file_runs: int
    cow_runs: int
    cow_mib: int
    commit_files: int
    copy_up_files: int  # of those, edited by the VM itself
    commit_rounds: int
    budget: float  # seconds the whole run may take; later rounds are skipped past it

    @staticmethod
    def of(quick: bool) -> Plan:
        if quick:
            return Plan(
                quick=True, runs=15, rounds=1, warmup=2, idle_vms=25, nginx_vms=0,
                wrk_seconds=2, wrk_rounds=1, file_runs=2, cow_runs=1, cow_mib=256,
                commit_files=500, copy_up_files=50, commit_rounds=1, budget=110,
            )  # fmt: skip
        return Plan(
            quick=False, runs=60, rounds=3, warmup=3, idle_vms=1000, nginx_vms=50,
            wrk_seconds=5, wrk_rounds=3, file_runs=5, cow_runs=3, cow_mib=256,
            commit_files=10_000, copy_up_files=1_000, commit_rounds=2, budget=14 * 60,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Numbers and their formatting


@dataclass
class Stats:
    min: float
    median: float
    max: float
    # The 90th percentile: a script's loop feels the tail, which a median hides.
    p90: float

    @staticmethod
    def of(values: list[float]) -> Stats:
        p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
        return Stats(min(values), statistics.median(values), max(values), p90)


def secs(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.2f} ms"
    return f"{value:.2f} s"


def mib(value: float) -> str:
    return f"{value / MIB:.2f} MiB"


def drop(value: float) -> str:
    """A drop of MemAvailable: the whole machine's figure, which other work can move either way."""
    return mib(value) if value > 0 else "— (other work freed memory meanwhile)"


def times(ratio: float) -> str:
    return f"{ratio:.2f}×"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def stat_cells(stats: Stats, unit: Callable[[float], str] = secs) -> list[str]:
    return [unit(stats.min), unit(stats.median), unit(stats.max)]


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        # A newline would end the table row; in a shell command it is a `;`.
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", "; ") for cell in row) + " |")
    return "\n".join(lines)


# The exact feather command prefix (binary and --root) and the run's folder are stated once in
# the report; commands show them as `feather` and `$WORK`.
FEATHER_PREFIX: list[str] = []
WORK_DIR: list[str] = []


def code(argv: list[str] | str) -> str:
    if not isinstance(argv, str):
        if FEATHER_PREFIX and argv[: len(FEATHER_PREFIX)] == FEATHER_PREFIX:
            argv = ["feather", *argv[len(FEATHER_PREFIX) :]]
        elif FEATHER_PREFIX and argv and argv[0] == FEATHER_PREFIX[0]:
            argv = ["feather", *argv[1:]]
        argv = shlex.join(argv)
    if WORK_DIR:
        argv = argv.replace(WORK_DIR[0], "$WORK")
    return "`" + argv.replace("`", "'") + "`"


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)
    # (what, target, measured, verdict) for the summary at the top
    targets: list[list[str]] = field(default_factory=list)

    def add(self, title: str, *parts: str) -> None:
        self.sections.append(f"## {title}\n\n" + "\n\n".join(p for p in parts if p))

    def target(self, what: str, target: str, measured: str, ok: bool | None) -> None:
        self.targets.append([what, target, measured, "—" if ok is None else verdict(ok)])


# ---------------------------------------------------------------------------------------------
# Processes


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], *, timeout: float = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited with {result.returncode}: {why(result)}")
    return result


def why(result: subprocess.CompletedProcess) -> str:
    """The last few lines a failed command printed, as one line."""
    text = (result.stderr or "").strip() or (result.stdout or "").strip()
    return " / ".join(text.splitlines()[-3:]) or "(no output)"


def try_once(argv: list[str], timeout: float = 60) -> str | None:
    """None if the command runs and succeeds here, else why not (exit status and its words)."""
    try:
        # As hyperfine runs it: the pool's rows time the pool whatever the caller exported.
        result = run(argv, timeout=timeout, check=False, env=without_pool_opt_out())
    except FileNotFoundError:
        return f"{argv[0]} is not installed"
    except subprocess.TimeoutExpired:
        return f"did not finish within {timeout:.0f} s"
    if result.returncode == 0:
        return None
    return f"exit status {result.returncode}: {why(result)}"


def timed(argv: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    began = time.perf_counter()
    result = run(argv, **kw)
    return time.perf_counter() - began, result


def children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], children(pid)
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children(p)
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def kill_and_reap(process: subprocess.Popen, how: signal.Signals = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(how)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_by_pid(pid: int, marker: str, grace: float = 5) -> None:
    """Stops a daemon this run started (nginx's master): SIGTERM, SIGKILL after `grace`. Only if
    its command line still holds `marker` (a path of this run): the pid may have been reused."""
    try:
        if marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)
    except (ProcessLookupError, FileNotFoundError):
        return


# ---------------------------------------------------------------------------------------------
# Memory, from the kernel's accounting


@dataclass
class Memory:
    rss: int = 0
    pss: int = 0
    uss: int = 0  # private pages: what the process alone maps (file pages included)
    anon: int = 0  # anonymous pages: heap, stack; not shared with the page cache

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.pss + other.pss, self.uss + other.uss, self.anon + other.anon)

    def per(self, n: int) -> Memory:
        return Memory(self.rss // n, self.pss // n, self.uss // n, self.anon // n)


def process_memory(pid: int) -> Memory:
    """Rss, Pss and private memory of one process, from /proc/<pid>/smaps_rollup."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        return Memory()
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return Memory(fields.get("Rss", 0), fields.get("Pss", 0), private, fields.get("Anonymous", 0))


PSS_PARTS = [
    "program code (.text)",
    "program read-only data (.rodata, .eh_frame, relocations)",
    "relocated data (.data.rel.ro, .got: written at load, private)",
    "program .data, .bss",
    "heap",
    "stack",
    "other anonymous (thread-local, allocator)",
    "shared libraries (libc, loader, libgcc)",
]


def pss_parts(pid: int) -> dict[str, int]:
    """What one process's Pss is made of, from /proc/<pid>/smaps: its program's mappings by
    kind, heap, stack, other anonymous memory and the shared libraries."""
    parts = dict.fromkeys(PSS_PARTS, 0)
    try:
        program = os.readlink(f"/proc/{pid}/exe")
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return parts
    # A re-executed init runs its program through the dynamic loader: its program is then the
    # loader's first argument that is not an option.
    if "ld-linux" in program:
        program = next((a.decode() for a in command[1:] if a.startswith(b"/") and b"ld-linux" not in a and not a.endswith(b"/.feather-init")), program)
    name, perms, anon = "", "", 0
    for line in text.splitlines():
        fields = line.split()
        if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", fields[0]):
            name, perms = (fields[5] if len(fields) > 5 else ""), fields[1]
        elif fields[0] == "Pss:":
            pss = int(fields[1]) * 1024
        elif fields[0] == "Anonymous:":
            anon = int(fields[1]) * 1024
            if name == program:
                part = ("program code (.text)" if "x" in perms else
                        "relocated data (.data.rel.ro, .got: written at load, private)" if anon and "w" not in perms else
                        "program .data, .bss" if "w" in perms else
                        "program read-only data (.rodata, .eh_frame, relocations)")
            elif name == "[heap]":
                part = "heap"
            elif name == "[stack]":
                part = "stack"
            elif name.startswith("/"):
                part = "shared libraries (libc, loader, libgcc)"
            else:
                part = "other anonymous (thread-local, allocator)"
            parts[part] += pss
    return parts


def processes_memory(pids: list[int]) -> Memory:
    total = Memory()
    for pid in pids:
        total += process_memory(pid)
    return total


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# The kernel's memory that reclaim cannot give back (/proc/meminfo), where an idle VM's cost
# beyond its processes' pages lies (docs/design.md, "An idle VM's kernel memory"): far
# steadier on a shared machine than MemAvailable, which others' page cache moves by hundreds
# of KiB a VM.
KERNEL_UNRECLAIMABLE = ("SUnreclaim", "KernelStack", "PageTables", "Percpu")


def kernel_unreclaimable() -> int:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0]) * 1024
    return sum(fields.get(name, 0) for name in KERNEL_UNRECLAIMABLE)


def kernel_growth(value: float) -> str:
    """A growth of the kernel's unreclaimable memory: the whole machine's, which other work moves too."""
    return mib(value) if value > 0 else "— (other work freed kernel memory meanwhile)"


def memory_cgroup(paths: list[str]) -> Path | None:
    """The folder of a VM's cgroup that accounts memory (v1 memory controller or v2)."""
    for path in map(Path, paths):
        if (path / "memory.usage_in_bytes").exists() or (path / "memory.current").exists():
            return path
    return None


def cgroup_usage(path: Path | None) -> int:
    if path is None:
        return 0
    for name in ("memory.usage_in_bytes", "memory.current"):
        try:
            return int((path / name).read_text())
        except OSError:
            continue
    return 0


def cgroup_pids(path: Path | None) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()] if path else []
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# feather, driven through its command line


class Feather:
    """A state root driven through the command line. Every command it runs is out of the pool
    (`FEATHER_POOL=0`; docs/design.md, "The pool"): on by default, it would leave a VM made ahead
    in each of the bench's roots. The rows that time the pool set it up on roots of their own."""

    def __init__(self, binary: Path, root: Path, env: dict[str, str] | None = None):
        self.binary, self.root = binary, root
        self.env = {**os.environ, **(env or {}), "FEATHER_POOL": "0"}
        self.ids: set[str] = set()  # every VM this run made, to look for leftover cgroups

    def cmd(self, *args: str) -> list[str]:
        return [str(self.binary), "--root", str(self.root), *args]

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run(self.cmd(*args), env=self.env, **kw)

    def up(self, name: str, *create_args: str) -> dict:
        self("create", name, *create_args)
        self("start", name)
        info = self.inspect(name)
        self.ids.add(info["config"]["id"])
        return info

    def inspect(self, name: str) -> dict:
        return json.loads(self("inspect", name).stdout)

    def exec(self, name: str, *argv: str, **kw) -> subprocess.CompletedProcess:
        return self("exec", name, "--", *argv, **kw)

    def names(self) -> list[str]:
        try:
            return [row["name"] for row in json.loads(self("ls", "--json").stdout)]
        except (RuntimeError, ValueError):
            return []

    def remove(self, name: str) -> None:
        self("rm", "--force", name, check=False, timeout=60)

    def remove_all(self) -> None:
        for name in self.names():
            self.remove(name)
        # The root's network lingers after its last throw-away VM (docs/network.md). Drained
        # first (the size left 0, so that no refill under way makes another VM), then the
        # network taken down.
        self("pool", "--drain", check=False, timeout=60)
        self("network", "down", check=False, timeout=60)


# ---------------------------------------------------------------------------------------------
# The run: its folders, its clean-up, the hyperfine driver


class Bench:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.report = Report()
        self.work = Path(tempfile.mkdtemp(prefix="feather-bench.", dir="/tmp"))
        # nginx workers run as an unprivileged user and read the bench's web root.
        self.work.chmod(0o755)
        self.scratch = self.work / "scratch"  # visible inside VMs (lower layer)
        self.scratch.mkdir(mode=0o755)
        self.feather = Feather(TARGET_DIR / "release" / "feather", self.work / "root")
        FEATHER_PREFIX[:] = self.feather.cmd()
        WORK_DIR[:] = [str(self.work)]
        self.floor = self.work / "floor"
        self.fileops = self.work / "fileops"
        self.cleanups: list[tuple[str, Callable[[], None]]] = []
        self.installed: dict[str, str] = {}  # package -> version, or why it is missing
        self.hyperfine_count = 0
        self.started = time.monotonic()
        self.peer_state_existed = {folder for folder in PEER_STATE if folder.exists()}

    def time_left(self) -> float:
        return self.plan.budget - (time.monotonic() - self.started)

    def on_cleanup(self, what: str, action: Callable[[], None]) -> None:
        self.cleanups.append((what, action))

    def clean_up(self) -> list[str]:
        """Undoes everything in reverse order; returns what could not be undone."""
        problems = []
        while self.cleanups:
            what, action = self.cleanups.pop()
            try:
                action()
            except Exception as e:  # noqa: BLE001 - clean-up goes on whatever fails
                problems.append(f"{what}: {e}")
        self.feather.remove_all()
        self.unmount_all()
        for folder in PEER_STATE:
            if folder not in self.peer_state_existed:
                self.remove_peer_state(folder)
        problems += self.leftovers()
        shutil.rmtree(self.work, ignore_errors=True)
        forget_roots_below(self.work)
        if self.work.exists():
            problems.append(f"{self.work} could not be removed")
        return problems

    def unmount_all(self, under: Path | None = None) -> None:
        """Unmounts whatever peers left mounted under the run's folder (podman's storage)."""
        under = under or self.work
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((p for p in points if Path(p).is_relative_to(under)), reverse=True):
            run(["umount", "-l", point], check=False)

    def remove_peer_state(self, folder: Path) -> None:
        """A peer's run-time folder that this run made (firejail's mounts, crun's state)."""
        if folder.exists():
            self.unmount_all(folder)
            shutil.rmtree(folder, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Mounts, processes and cgroups of this run that still exist."""
        found = []
        mark = str(self.work)
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if mark in line:
                found.append(f"mount: {line.split()[4]}")
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if mark in cmdline:
                    found.append(f"process {entry.name}: {cmdline.strip()}")
        for folder in PEER_STATE:
            if folder.exists() and folder not in self.peer_state_existed:
                found.append(f"peer state: {folder}")
        for vm_id in self.feather.ids:
            for hierarchy in Path("/sys/fs/cgroup").iterdir():
                group = hierarchy / "feather" / vm_id
                if group.exists():
                    found.append(f"cgroup: {group}")
        return found

    def hyperfine(
        self, commands: list[tuple[str, list[str]]], runs: int | None = None, warmup: int | None = None
    ) -> dict[str, Stats]:
        """Times each (label, argv) with hyperfine, without a shell; min/median/max seconds.
        The runs are split into rounds that take turns (order reversed every other round), so
        that a busy moment of the shared machine does not fall on one command alone."""
        if not commands:
            return {}
        runs = runs or self.plan.runs
        rounds = max(1, min(self.plan.rounds, runs // 5))
        times: dict[str, list[float]] = {label: [] for label, _ in commands}
        for round_ in range(rounds):
            self.hyperfine_count += 1
            export = self.work / f"hyperfine-{self.hyperfine_count}.json"
            argv = [
                "hyperfine", "-N", "--style", "none",
                "--runs", str(runs // rounds + (1 if round_ < runs % rounds else 0)),
                "--warmup", str(self.plan.warmup if warmup is None else warmup),
                "--export-json", str(export),
            ]  # fmt: skip
            for label, command in commands if round_ % 2 == 0 else commands[::-1]:
                argv += ["--command-name", label, shlex.join(command)]
            # Without the caller's FEATHER_POOL: the "as typed" row is the pool on by default
            # (roots timed cold have `pool --size 0` persisted).
            run(argv, timeout=600, env=without_pool_opt_out())
            for result in json.loads(export.read_text())["results"]:
                times[result["command"]] += result["times"]
        return {label: Stats.of(values) for label, values in times.items()}

    def probe_and_time(
        self, candidates: list[tuple[str, list[str]]]
    ) -> tuple[dict[str, Stats], dict[str, str]]:
        """Tries each command once; times those that work; returns timings and failures."""
        working, failures = [], {}
        for label, argv in candidates:
            problem = try_once(argv)
            if problem:
                failures[label] = problem
                log(f"{label}: cannot run here: {problem}")
            else:
                working.append((label, argv))
        return self.hyperfine(working), failures


# ---------------------------------------------------------------------------------------------
# Set-up: peers, feather, the floor program, the machine


def install_peers(bench: Bench) -> None:
    def version(package: str) -> str | None:
        result = run(["dpkg-query", "-W", "-f=${Status} ${Version}", package], check=False)
        words = result.stdout.split()
        return words[-1] if result.returncode == 0 and "installed" in words[:3] else None

    missing = [p for p in PACKAGES if version(p) is None]
    if missing:
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
        apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
        if run(apt + missing, check=False, env=env, timeout=900).returncode != 0:
            # One at a time, so that one broken package does not cost the others.
            for package in missing:
                result = run(apt + [package], check=False, env=env, timeout=900)
                if result.returncode != 0:
                    bench.installed[package] = f"not installed: {why(result)}"
    for package in PACKAGES:
        bench.installed.setdefault(package, version(package) or "not installed")


def build(bench: Bench) -> None:
    log("building feather (release)")
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    # As setup.sh builds it (the front and the keeper linked statically): a plain `cargo build
    # --release` would relink those two dynamic and measure another feather than the installed.
    path = f"{Path(cargo).parent}:{os.environ.get('PATH', '')}"
    run([str(REPO / "scripts" / "build-release")], cwd=REPO, timeout=1800,
        env={**os.environ, "PATH": path, "CARGO_TERM_QUIET": "true"})
    source = REPO / "bench" / "floor" / "floor.c"
    run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(bench.floor), str(source)])
    source = REPO / "bench" / "fileops" / "fileops.c"
    run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(bench.fileops), str(source)])


def machine(bench: Bench, started: float, load_before: str) -> str:
    def first(path: str, prefix: str) -> str:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
        return "?"

    v2_controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        cgroups = "v2 (unified)"
    elif Path("/sys/fs/cgroup/memory").is_dir():
        extra = v2_controllers.read_text().strip() if v2_controllers.exists() else ""
        cgroups = f"v1 controllers, hybrid (v2 hierarchy holds: {extra or 'nothing'})"
    else:
        cgroups = "unknown"
    commit = run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=False).stdout.strip()
    dirty = run(["git", "status", "--porcelain", "--", "crates"], cwd=REPO, check=False).stdout.strip()
    rows = [
        ["kernel", os.uname().release],
        ["distribution", f"Debian {Path('/etc/debian_version').read_text().strip()}"],
        ["CPU", f"{first('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores"],
        ["memory", first("/proc/meminfo", "MemTotal")],
        ["cgroups", cgroups],
        ["filesystem of /tmp (state root, scratch files)", filesystem_of(Path("/tmp"))],
        ["load average (1/5/15 min) at start, end", f"{load_before}; {load_average()}"],
        ["feather", f"commit {commit}{' (crates modified)' if dirty else ''}, release build; "
         f"`feather` in the commands below stands for `{shlex.join(FEATHER_PREFIX)}` (a state "
         f"root of the run's own) and `$WORK` for `{WORK_DIR[0]}`, the run's folder, both removed "
         "at the end"],
        ["mode", "quick (`bench/run --quick`)" if bench.plan.quick else "full (`bench/run`)"],
        ["whole run", secs(time.monotonic() - started)],
    ]
    packages = [[p, bench.installed.get(p, "?"), use] for p, use in PACKAGES.items()]
    return (
        table(["", ""], rows)
        + "\n\nThis machine is shared: other work may run at the same time, so single figures "
        "are noisy. Every ratio below compares figures taken minutes apart in the same run.\n\n"
        + table(["package", "version", "used for"], packages)
    )


def filesystem_of(path: Path) -> str:
    """Type and options of the filesystem holding `path` (ext4's `discard` makes every freed
    block a synchronous discard: it shows in feather's removal of a VM's folder)."""
    best = ("", "?", "")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point, rest = fields[4], fields[fields.index("-") + 1 :]
        if path.is_relative_to(point) and len(point) >= len(best[0]):
            best = (point, rest[0], f"{fields[5]},{rest[2]}")
    return f"{best[1]} on {best[0]} ({best[2]})"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# A timed section starts once the host is quiet: the share of CPU time busy over a window of
# SETTLE_WINDOW seconds (from /proc/stat, all cores) at most SETTLE_BUSY and at most
# SETTLE_BLOCKED tasks in uninterruptible sleep, waited for at most SETTLE_PATIENCE seconds.
# What the last section left (the 1000 VMs' teardown: keepers letting go of their mounts, the
# kernel deleting veths and namespaces) loaded the next one's figures — also with the CPUs
# idle: a full run measured nginx and the file-heavy job beside ~100 blocked tasks (load
# average 94–131, CPU 1–7 % busy), the file job at half its quiet figure.
SETTLE_BUSY = 0.10
SETTLE_BLOCKED = 2
SETTLE_WINDOW = 1.0
SETTLE_PATIENCE = 180.0


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat's first line; iowait counts as idle."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def cpu_busy(window: float = SETTLE_WINDOW) -> float:
    """The share of all cores' time spent busy over the next `window` seconds."""
    busy, total = cpu_times()
    time.sleep(window)
    busy2, total2 = cpu_times()
    return (busy2 - busy) / max(total2 - total, 1)


def blocked_tasks() -> int:
    """Tasks (processes and kernel threads) in uninterruptible sleep now: state D in
    /proc/PID/stat, what the load average counts beside the running ones."""
    blocked = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state = stat.read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        blocked += state == "D"
    return blocked


@dataclass
class Settled:
    waited: float  # seconds
    busy_first: float  # share of CPU time busy in the first window
    busy: float  # in the last window, the one the section started after
    blocked: int  # tasks in uninterruptible sleep as the section started
    load: str  # load average as the section started
    bound: float  # the share of CPU time busy it waited to come under
    patience: float  # seconds it would wait at most

    def note(self) -> str:
        quiet = self.busy <= self.bound and self.blocked <= SETTLE_BLOCKED
        if self.waited < SETTLE_WINDOW * 1.5:
            how = f"quiet at once (CPU {self.busy:.0%} busy over {SETTLE_WINDOW:g} s, {self.blocked} tasks blocked)"
        else:
            how = (
                f"waited {self.waited:.0f} s for it to settle (CPU {self.busy_first:.0%} busy at first, "
                f"{self.busy:.0%} at the start, {self.blocked} tasks blocked"
                + ("" if quiet else f"; still not quiet after {self.patience:g} s, measured anyway")
                + ")"
            )
        return f"Host as this section started: {how}; load average {self.load}."


def settle(what: str, busy_at_most: float = SETTLE_BUSY, patience: float = SETTLE_PATIENCE) -> Settled:
    """Waits until the host is quiet (see SETTLE_BUSY, SETTLE_BLOCKED), at most `patience`
    seconds; says what it waited for when it waited."""
    began = time.monotonic()
    first = busy = cpu_busy()
    blocked = blocked_tasks()
    while (busy > busy_at_most or blocked > SETTLE_BLOCKED) and time.monotonic() - began < patience:
        busy = cpu_busy()
        blocked = blocked_tasks()
    waited = time.monotonic() - began
    settled = Settled(waited, first, busy, blocked, load_average(), busy_at_most, patience)
    if waited >= SETTLE_WINDOW * 1.5:
        log(
            f"{what}: waited {waited:.0f} s for the host to settle (CPU {first:.0%} → {busy:.0%} busy, "
            f"{blocked} tasks blocked, load {settled.load})"
        )
    return settled


# ---------------------------------------------------------------------------------------------
# 1. Start


def crun_bundle(bench: Bench) -> Path:
    """An OCI bundle whose rootfs is an overlay of / (mounted on the host for crun to use)."""
    bundle = bench.work / "crun-bundle"
    for name in ("rootfs", "upper", "work"):
        (bundle / name).mkdir(parents=True)
    options = f"lowerdir=/,upperdir={bundle / 'upper'},workdir={bundle / 'work'}"
    run(["mount", "-t", "overlay", "overlay", "-o", options, str(bundle / "rootfs")])
    bench.on_cleanup("unmount the crun bundle's rootfs", lambda: run(["umount", "-l", str(bundle / "rootfs")]))
    run(["crun", "spec"], cwd=bundle)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = ["/bin/true"]
    spec["process"]["terminal"] = False
    spec["root"] = {"path": "rootfs", "readonly": False}
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    return bundle


def compare_start(bench: Bench) -> None:
    f = bench.feather
    # The bench's own root has no pool (persisted: hyperfine's runs carry no FEATHER_POOL=0), so
    # that its rows, the phase breakdown's included, are cold starts; the pool's rows below have
    # roots of their own.
    f("pool", "--size", "0")
    floor_dir = bench.work / "floor-scratch"
    floor_dir.mkdir()
    candidates: list[tuple[str, list[str]]] = [
        ("plain /bin/true", ["/bin/true"]),
        ("unshare, same namespaces", ["unshare", "--mount", "--pid", "--fork", "--ipc", "--uts", "--net", "--cgroup", "/bin/true"]),
        ("floor: clone + overlay of / + pivot_root + exec", [str(bench.floor), str(floor_dir), "/bin/true"]),
        ("bwrap --unshare-all", ["bwrap", "--dev-bind", "/", "/", "--unshare-all", "true"]),
        ("firejail --noprofile", ["firejail", "--noprofile", "--quiet", "/bin/true"]),
    ]  # fmt: skip
    notes: dict[str, str] = {}
    failures: dict[str, str] = {}

    help_text = run(["bwrap", "--help"], check=False).stdout if shutil.which("bwrap") else ""
    bwrap_version = run(["bwrap", "--version"], check=False).stdout.strip() if help_text else ""
    if "--tmp-overlay" in help_text:
        candidates.append(
            ("bwrap, overlay of /", ["bwrap", "--overlay-src", "/", "--tmp-overlay", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "true"])
        )  # fmt: skip
    else:
        failures["bwrap, overlay of /"] = (
            f"{bwrap_version or 'bubblewrap'} has no overlay options (--overlay-src, --tmp-overlay); "
            "only newer releases have them"
        )

    if shutil.which("crun"):
        try:
            bundle = crun_bundle(bench)
            state = bench.work / "crun-state"
            candidates.append(("crun, rootfs = overlay of /", ["crun", "--root", str(state), "run", "--bundle", str(bundle), "feather-bench"]))
            plain = try_once(candidates[-1][1])
            if plain:
                retry = ["crun", "--root", str(state), "--cgroup-manager=disabled", "run", "--bundle", str(bundle), "feather-bench"]
                if try_once(retry) is None:
                    candidates[-1] = ("crun --cgroup-manager=disabled, rootfs = overlay of /", retry)
                    notes["crun"] = f"crun with its default cgroup manager failed: {plain}"
                else:
                    notes["crun"] = f"also tried {code(retry)}: {try_once(retry)}"
        except RuntimeError as e:
            failures["crun, rootfs = overlay of /"] = f"could not set up the bundle: {e}"
    else:
        failures["crun, rootfs = overlay of /"] = "crun is not installed"

    # podman keeps its storage, run state and temporary files in the run's folder, and gets no
    # network: its default (CNI) would add a bridge and firewall rules to the host.
    podman_home = bench.work / "podman"
    podman_base = ["podman", "--root", f"{podman_home}/root", "--runroot", f"{podman_home}/run",
                   "--tmpdir", f"{podman_home}/tmp", "--events-backend", "none"]  # fmt: skip
    podman = podman_base + ["run", "--rm", "--network", "none", "--rootfs", "/:O", "/bin/true"]
    candidates.append(("podman run --rootfs /:O", podman))
    if shutil.which("podman") and try_once(podman, timeout=120):
        # Its default limits exceed this machine's hard limits; its next hurdle is cgroups.
        retry = podman_base + ["run", "--rm", "--network", "none", "--cgroups=disabled", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--rootfs", "/:O", "/bin/true"]  # fmt: skip
        problem = try_once(retry, timeout=120)
        notes["podman"] = f"also tried {code(retry)}: " + (problem or "works; timed instead")
        if problem is None:
            candidates[-1] = ("podman run --rootfs /:O (cgroups disabled, lower ulimits)", retry)

    candidates.append(
        ("systemd-nspawn --volatile=overlay", ["systemd-nspawn", "--quiet", "--register=no", "--volatile=overlay", "-D", "/", "/bin/true"])
    )  # fmt: skip
    # Like the peers (bwrap's and podman's namespaces hold only loopback), feather gets no network
    # here; what its own network (--net private, the default) costs is section 6.
    candidates.append(("feather run --rm", f.cmd("run", "--rm", "--net", "none", "--", "/bin/true")))
    # The default network, a private one (issue 15's first row), made by the run: a cold start.
    candidates.append((COLD_DEFAULT, f.cmd("run", "--rm", "--", "/bin/true")))
    # The command a user types, as they get it: the pool on by default (one VM made ahead, which
    # the first run's fill makes; each run claims it, and its keeper's refill makes the next).
    typed = Feather(f.binary, bench.work / "default-root")
    typed_argv = typed.cmd("run", "--rm", "--", "/bin/true")
    run(typed_argv, env=without_pool_opt_out())  # the root's first run: a miss, and the fill
    bench.on_cleanup("take down the default root's network", typed.remove_all)
    candidates.append((TYPED_DEFAULT, typed_argv))
    # A persistent VM's whole life, each step a command of its own as a user types them (issue
    # 15's evidence: "create + start + stop + rm of a persistent VM against the floor"). The
    # shell that chains them is in the figure too: the "sh -c" row below is its own cost.
    lifecycle = " && ".join(shlex.join(f.cmd(*step)) for step in (
        ("create", "life-bench"), ("start", "life-bench"), ("stop", "life-bench"), ("rm", "life-bench")
    ))  # fmt: skip
    candidates.append(("sh -c running /bin/true (the shell of the next row)", ["sh", "-c", "/bin/true"]))
    candidates.append(("feather create + start + stop + rm of a persistent VM", ["sh", "-c", lifecycle]))
    # The same two with every file they make on a tmpfs: what the disk costs them (see the note).
    memory_fs = bench.work / "tmpfs"
    memory_fs.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "feather-bench", str(memory_fs)])
    bench.on_cleanup("unmount the tmpfs", lambda: run(["umount", "-l", str(memory_fs)]))
    (memory_fs / "floor").mkdir()
    tmpfs_feather = Feather(f.binary, memory_fs / "root")
    candidates.append(("floor, scratch on a tmpfs", [str(bench.floor), str(memory_fs / "floor"), "/bin/true"]))
    candidates.append(("feather run --rm, state root on a tmpfs", tmpfs_feather.cmd("run", "--rm", "--net", "none", "--", "/bin/true")))

    # A root with a pool (docs/design.md, "The pool"), filled before the timing: each run claims a
    # VM made ahead, and the claimed VM's keeper starts the refill as it ends. Only the default
    # options are pooled (`--net none` is a miss by design): one row, the command a user types.
    pool_label = f"feather run --rm, from a pool of {POOL_SIZE} (default network), back to back"
    pool_feather = Feather(f.binary, bench.work / "pool-root")
    pool_feather("pool", "--size", str(POOL_SIZE))
    # Drained, then the network a miss's teardown left lingering (docs/network.md) taken down.
    bench.on_cleanup("take down the pool root's network", pool_feather.remove_all)
    bench.on_cleanup("drain the pool", lambda: pool_feather("pool", "--drain"))
    candidates.append((pool_label, pool_feather.cmd("run", "--rm", "--", "/bin/true")))

    stats, failed = bench.probe_and_time(candidates)
    failures.update(failed)
    order = [label for label, _ in candidates if label in stats]
    commands = dict(candidates)
    bwrap = stats.get("bwrap --unshare-all")
    floor = stats.get("floor: clone + overlay of / + pivot_root + exec")
    rows = []
    for label in order:
        s = stats[label]
        rows.append(
            [label, code(commands[label]), secs(s.min), secs(s.median), secs(s.p90), secs(s.max),
             times(s.median / bwrap.median) if bwrap else "—",
             times(s.median / floor.median) if floor else "—"]
        )  # fmt: skip
    feather = stats.get("feather run --rm")
    default = stats.get(COLD_DEFAULT)
    as_typed = stats.get(TYPED_DEFAULT)
    parts = [
        "Time from exec of the command until it has exited, for a command that does nothing: the "
        "cost of making (and removing) the sandbox. hyperfine without a shell, "
        f"{bench.plan.runs} runs of each, in {bench.plan.rounds} round(s) that take turns, each "
        f"after {bench.plan.warmup} warm-up runs.",
        table(["what", "command", "min", "median", "p90", "max", "× bwrap", "× floor"], rows),
    ]
    if failures:
        parts.append(
            "Could not run here (exact error):\n\n"
            + "\n".join(f"- **{label}**: {problem}" for label, problem in failures.items())
        )
    if notes:
        parts.append("\n".join(f"- {peer}: {note}" for peer, note in notes.items()))
    parts.append(
        "systemd-nspawn is only ever given `--volatile=overlay` on `/`; `--ephemeral` would copy "
        "the whole disk. The floor (bench/floor/floor.c) does only clone into the six namespaces, "
        "an overlay whose lower layer is `/`, pivot_root and exec — no /proc, /dev, /sys or /run "
        "of its own, no cgroup, no capability drop, no state on disk. The two tmpfs rows run the "
        "floor and feather with every folder they make (the overlay's upper and work folders, "
        "feather's state) on a tmpfs: the difference to the rows above is what the disk costs "
        "them — creating and removing folders on the host's filesystem (see its mount options "
        "under Machine: with ext4's `discard`, each freed block is a synchronous discard) and "
        "overlayfs syncing its upper filesystem when the VM's mounts go away. A throw-away VM "
        "keeps its layer in a tmpfs of its keeper's anyway (docs/design.md, \"A throw-away VM's "
        "layer in memory\"): for feather the difference is its records (config, state, run "
        "folder), which stay on the state root's disk."
    )
    if feather and bwrap:
        ratio = feather.median / bwrap.median
        parts.append(
            f"**feather run --rm / bwrap median: {times(ratio)}** (target ≤ {START_TARGET}×: "
            f"{verdict(ratio <= START_TARGET)})."
            + (f" feather / floor: {times(feather.median / floor.median)}." if floor else "")
        )
        bench.report.target(
            "start: `feather run --rm --net none -- /bin/true`",
            f"median ≤ {START_TARGET}× `bwrap --unshare-all`",
            f"{secs(feather.median)} vs {secs(bwrap.median)}: {times(ratio)}",
            ratio <= START_TARGET,
        )
    on_tmpfs = stats.get("feather run --rm, state root on a tmpfs")
    if on_tmpfs and bwrap:
        ratio = on_tmpfs.median / bwrap.median
        bench.report.target(
            "start: `feather --root <tmpfs> run --rm -- /bin/true`",
            f"median ≤ {START_TARGET}× `bwrap --unshare-all`",
            f"{secs(on_tmpfs.median)} vs {secs(bwrap.median)}: {times(ratio)}",
            ratio <= START_TARGET,
        )
    if feather and floor:
        bench.report.target(
            "start: close to the floor",
            "close to unshare + overlay + exec (no number given)",
            f"{secs(feather.median)} vs {secs(floor.median)}: {times(feather.median / floor.median)}",
            None,
        )
    life = stats.get("feather create + start + stop + rm of a persistent VM")
    if life and floor:
        bench.report.target(
            "a persistent VM: `create` + `start` + `stop` + `rm`",
            "against the floor (no number given)",
            f"{secs(life.median)} vs {secs(floor.median)}: {times(life.median / floor.median)}",
            None,
        )
    if default and bwrap:
        ratio = default.median / bwrap.median
        bench.report.target(
            "start: `feather run --rm -- /bin/true`, cold (no pool: `pool --size 0`)",
            f"median ≤ {START_TARGET}× `bwrap --unshare-all`",
            f"{secs(default.median)} vs {secs(bwrap.median)}: {times(ratio)}",
            ratio <= START_TARGET,
        )
    if as_typed and bwrap:
        ratio = as_typed.median / bwrap.median
        parts.append(
            f"**As typed** (`{TYPED_DEFAULT}`): a root with no pool setting, so the default's, one VM "
            "made ahead (docs/design.md, \"The pool\"); its first run (before the row) missed and "
            "started the fill. Back to back, each run claims the VM the last one's refill made if "
            "that fill is done, and otherwise makes its own beside the fill: the row mixes hits "
            f"and misses. Median {times(ratio)} bwrap (target ≤ {START_TARGET}×: "
            f"{verdict(ratio <= START_TARGET)}); the cold row above is the same command with "
            "the pool off."
        )
        bench.report.target(
            "start: `feather run --rm -- /bin/true` as typed (pool on by default: 1), back to back",
            f"median ≤ {START_TARGET}× `bwrap --unshare-all`",
            f"{secs(as_typed.median)} vs {secs(bwrap.median)}: {times(ratio)}",
            ratio <= START_TARGET,
        )
    pooled = stats.get(pool_label)
    if pooled and bwrap:
        ratio = pooled.median / bwrap.median
        parts.append(
            f"**From a pool of {POOL_SIZE}** (`feather pool --size {POOL_SIZE}`, filled before the "
            "row; docs/design.md, \"The pool\"): a run that finds a VM made ahead claims it, runs "
            "its command through init's exec channel and exits; the VM's keeper removes it and "
            "starts a fill, which makes a VM in the background. The runs here come back to back, "
            "as a script's loop: each fill's VM start (its keeper's boot, its network, beside the "
            "teardowns of the VMs just used) competes with the next runs for the 2 cores, and "
            "once runs outpace the fills the pool is empty and a run makes its own VM (a miss: "
            "today's path, slower still while a fill runs beside it). So the row mixes hits (its "
            "min: about exec's cost) and misses (its p90 and max); runs that come apart, or no "
            f"more at once than the pool holds, are all hits. Median {times(ratio)} bwrap "
            f"(target ≤ {START_TARGET}×: {verdict(ratio <= START_TARGET)})."
        )
        bench.report.target(
            f"start from a pool of {POOL_SIZE}: `feather run --rm -- /bin/true`, back to back",
            f"median ≤ {START_TARGET}× `bwrap --unshare-all`",
            f"{secs(pooled.median)} vs {secs(bwrap.median)}: {times(ratio)}",
            ratio <= START_TARGET,
        )
    spaced_peers = [commands.get("bwrap --unshare-all"), commands.get(COLD_DEFAULT)]
    if (pooled or as_typed) and not all(spaced_peers):
        parts.append(
            "No spaced pool rows: they time bwrap's run and the cold run (`"
            f"{COLD_DEFAULT}`) beside the pool's, and one of those rows failed or was left out."
        )
    if pooled and all(spaced_peers):
        parts += spaced_pool_row(bench, *spaced_peers, commands[pool_label])
    if as_typed and all(spaced_peers):
        parts += spaced_pool_row(bench, *spaced_peers, commands[TYPED_DEFAULT], size=1)
    parts += phase_breakdown(bench)
    bench.report.add("1. Start", *parts)


# The two rows of the command a user types, `feather run --rm -- /bin/true` (issue 15): with the
# pool off, a cold start; and as it comes, the pool on by default.
COLD_DEFAULT = "feather run --rm, default network (private), cold (no pool)"
TYPED_DEFAULT = "feather run --rm, default network (private), as typed (pool on by default: 1 VM)"
DEFAULT_NOTE = " (the default)"


def without_pool_opt_out() -> dict[str, str]:
    """The bench's environment without `FEATHER_POOL`, whatever its caller exported: the pool's
    rows time the pool."""
    return {key: value for key, value in os.environ.items() if key != "FEATHER_POOL"}


# The pause between two runs of the spaced pool row, each begun once both roots are at rest
# (`at_rest`): a user's or a service's commands come apart by more than a keystroke.
SPACED_PAUSE = 0.3

# How long a spaced run waits for the roots to be at rest before it is timed anyway (and
# counted so in its row): a refill or teardown still at work then competes with the run.
REST_PATIENCE = 10.0


def root_of(argv: list[str]) -> Path:
    """The state root a bench command of feather's names (`Feather.cmd`)."""
    return Path(argv[argv.index("--root") + 1])


def names_in(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def pool_ready(binary: str, root: Path) -> set[str]:
    """The VMs `feather pool` shows ready to be claimed in `root` (up, made under the host's
    present fingerprint)."""
    shown = run([binary, "--root", str(root), "pool"], env=without_pool_opt_out()).stdout
    line = next((l for l in shown.splitlines() if l.startswith("ready: ")), "ready: 0")
    return set(line.split()[2:])


def throw_aways(root: Path) -> set[str]:
    """The folders of `root`'s throw-away VMs (`run-…`, a run's or the pool's) and of those set
    aside for their teardown (`.removing-…`); a root's kept VMs are not among them."""
    return {name for name in names_in(root / "vms") if name.startswith(("run-", ".removing-"))}


def at_rest(binary: str, cold_root: Path, pool_root: Path, size: int) -> bool:
    """Whether nothing of the last spaced run is at work: the cold root holds no throw-away VM
    (the last cold run's teardown is over), and the pool's root holds its `size` VMs, all
    ready, and no other (the last hit's VM set aside and removed, its refill's VM up)."""
    if throw_aways(cold_root) or names_in(pool_root / "pool" / "claimed"):
        return False
    entries = names_in(pool_root / "pool" / "vms")
    if len(entries) != size or throw_aways(pool_root) != entries:
        return False
    return pool_ready(binary, pool_root) == entries


def rested(binary: str, cold_root: Path, pool_root: Path, size: int) -> bool:
    """Waits (up to `REST_PATIENCE`) until `at_rest`; whether it came."""
    deadline = time.monotonic() + REST_PATIENCE
    while not at_rest(binary, cold_root, pool_root, size):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def spaced_pool_row(bench: Bench, bwrap: list[str], cold: list[str], pooled: list[str], size: int = POOL_SIZE) -> list[str]:
    """Runs from the pool that come apart, as a user types commands or a service spawns
    sandboxes now and then: each run timed alone, `SPACED_PAUSE` after both roots came to rest
    (`at_rest`), taking turns with bwrap's and with the same command on a root without a pool
    (a cold start), timed the same way: all pay the same Python spawn cost and start as cold in
    the CPU's caches, so the pool's worth is its row against the cold one of this loop, not
    against hyperfine's. A pooled run is a hit if a VM the pool held ready before it is gone
    from the pool after it."""
    taken: dict[str, list[float]] = {"bwrap": [], "cold": [], "pool": []}
    cold_root, pool_root = root_of(cold), root_of(pooled)
    hits = unrested = 0
    for turn in range(bench.plan.runs):
        order = [("bwrap", bwrap), ("cold", cold), ("pool", pooled)]
        for label, argv in order if turn % 2 == 0 else order[::-1]:
            unrested += not rested(pooled[0], cold_root, pool_root, size)
            time.sleep(SPACED_PAUSE)
            ready = names_in(pool_root / "pool" / "vms")
            elapsed, _ = timed(argv, env=without_pool_opt_out())
            taken[label].append(elapsed)
            if label == "pool":
                hits += bool(ready - names_in(pool_root / "pool" / "vms"))
    b, c, p = (Stats.of(taken[label]) for label in ("bwrap", "cold", "pool"))
    ratio = p.median / b.median
    runs = bench.plan.runs
    name = f"a pool of {size}{DEFAULT_NOTE if size == 1 else ''}"
    bench.report.target(
        f"start from {name}: `feather run --rm -- /bin/true`, {SPACED_PAUSE} s apart",
        f"median ≤ {START_TARGET}× `bwrap --unshare-all`",
        f"{secs(p.median)} vs {secs(b.median)}: {times(ratio)}",
        ratio <= START_TARGET,
    )
    bench.report.target(
        f"start from {name}, {SPACED_PAUSE} s apart: a hit against a cold run",
        "median below the cold run's in the same loop",
        f"{secs(p.median)} vs {secs(c.median)}: {times(p.median / c.median)} ({hits} of {runs} hits)",
        p.median < c.median,
    )
    return [
        f"**From {name}, runs {SPACED_PAUSE} s apart** ({runs} of "
        "each, bwrap's, the cold run's (`pool --size 0`) and feather's from the pool taking turns, "
        "each timed from Python's spawn to its exit, begun once the last run's VM was gone and "
        f"the pool whole, then {SPACED_PAUSE} s): "
        f"feather median {secs(p.median)} (p90 {secs(p.p90)}), cold {secs(c.median)} (p90 "
        f"{secs(c.p90)}), bwrap {secs(b.median)} (p90 {secs(b.p90)}): {times(ratio)} bwrap "
        f"(target ≤ {START_TARGET}×: {verdict(ratio <= START_TARGET)}), {times(p.median / c.median)} "
        f"the cold run. {hits} of {runs} pooled runs were hits (a VM ready before the run gone "
        f"from the pool after it); {unrested} of {3 * runs} runs began before the roots were at "
        f"rest ({REST_PATIENCE:.0f} s waited)."
    ]


# What `FEATHER_TRACE=phases` prints: "feather-trace: <phase> <milliseconds> ms".
TRACE_LINE = re.compile(r"^feather-trace: (.+) (\d+(?:\.\d+)?) ms$")


def traced_phases(argv: list[str]) -> tuple[float, list[tuple[str, float]]]:
    """Runs `argv` once with feather's phase timings on; its wall time and its phases (seconds)."""
    env = dict(os.environ, FEATHER_TRACE="phases")
    elapsed, result = timed(argv, env=env)
    phases = []
    for line in result.stderr.splitlines():
        match = TRACE_LINE.match(line)
        if match:
            phases.append((match.group(1), float(match.group(2)) / 1000))
    return elapsed, phases


def phase_breakdown(bench: Bench) -> list[str]:
    """Where the time of the default `feather run --rm -- /bin/true` goes, phase by phase."""
    runs = max(10, bench.plan.runs // 3)
    argv = bench.feather.cmd("run", "--rm", "--", "/bin/true")
    walls: list[float] = []
    outside: list[float] = []
    by_phase: dict[str, list[float]] = {}
    for _ in range(runs):
        wall, phases = traced_phases(argv)
        walls.append(wall)
        # Per run: what its own phases do not cover. (The median of the whole minus the sum of
        # the phases' medians is no such figure: medians do not add up, and on a loaded machine
        # that difference once read 12.9 ms where each run left 2–3 ms uncovered.)
        outside.append(max(0.0, wall - sum(took for _, took in phases)))
        for name, took in phases:
            by_phase.setdefault(name, []).append(took)
    if not by_phase:
        return ["No phase timings: this feather prints none (`FEATHER_TRACE=phases`)."]
    # The same way timed, a feather that does nothing: starting the binary and its exit.
    idle = [timed(bench.feather.cmd("--version"))[0] for _ in range(runs)]
    wall = statistics.median(walls)
    rows = [
        [name, secs(statistics.median(values)), f"{100 * statistics.median(values) / wall:.0f}%",
         secs(max(values))]
        for name, values in by_phase.items()
    ]  # fmt: skip
    rows.append(["outside every phase (starting feather, its exit)", secs(statistics.median(outside)),
                 f"{100 * statistics.median(outside) / wall:.0f}%", secs(max(outside))])  # fmt: skip
    rows.append(["**whole run (wall clock)**", secs(wall), "100%", secs(max(walls))])
    return [
        f"Where the time of the default `feather run --rm -- /bin/true` goes: {runs} runs with "
        "`FEATHER_TRACE=phases`, which makes feather print each phase's duration to stderr (each "
        "phase is the time since the previous one). Medians per phase; their sum need not equal "
        "the median of the whole. Phases after \"run the command\" are the teardown. \"Outside "
        "every phase\" is, per run, the wall time its phases do not cover: the bench starting the "
        "process, the loading of the `feather` binary before its first phase, and its exit after "
        "the last (the teardown's slow end is left to a process of its own and is not waited "
        f"for). For scale, `feather --version` timed the same way (start, print, exit): median "
        f"{secs(statistics.median(idle))}.",
        table(["phase", "median", "share of the whole", "max"], rows),
    ]


# ---------------------------------------------------------------------------------------------
# 2. Exec


def compare_exec(bench: Bench) -> None:
    f = bench.feather
    info = f.up("exec-bench")
    init_pid = str(info["state"]["init_pid"])
    commands = [
        ("nsenter -a into the VM's init", ["nsenter", "-t", init_pid, "-a", "/bin/true"]),
        ("feather exec", f.cmd("exec", "exec-bench", "--", "/bin/true")),
    ]
    stats = bench.hyperfine(commands)
    f.remove("exec-bench")
    ns, fe = stats[commands[0][0]], stats[commands[1][0]]
    ratio = fe.median / ns.median
    rows = [[label, code(argv), *stat_cells(stats[label]), times(stats[label].median / ns.median)] for label, argv in commands]
    bench.report.add(
        "2. Exec into a running VM",
        "A running idle VM; `/bin/true` run inside it, joining its namespaces. nsenter joins the "
        "same namespaces of the VM's init (its host pid from `feather inspect`, `.state.init_pid`); "
        "feather exec checks the VM's state, asks the VM's init to fork the command (passing its stdio) and relays signals and the exit code.",
        table(["what", "command", "min", "median", "max", "× nsenter"], rows),
        f"**feather exec / nsenter median: {times(ratio)}** (target ≤ {EXEC_TARGET}×: {verdict(ratio <= EXEC_TARGET)}).",
    )
    bench.report.target(
        "exec: `feather exec VM -- /bin/true`",
        f"median ≤ {EXEC_TARGET}× `nsenter -a`",
        f"{secs(fe.median)} vs {secs(ns.median)}: {times(ratio)}",
        ratio <= EXEC_TARGET,
    )


# ---------------------------------------------------------------------------------------------
# 3. Memory and density


@dataclass
class VmMemory:
    keeper: Memory
    init: Memory
    spawner: Memory  # init's child that makes PrivateTmp= units' processes (docs/services.md)
    workload: Memory  # every other process in the VM's cgroup
    cgroup: int

    @property
    def own(self) -> Memory:
        """What feather itself keeps for the VM: its keeper, init and init's spawner."""
        return self.keeper + self.init + self.spawner

    def __add__(self, other: VmMemory) -> VmMemory:
        return VmMemory(
            self.keeper + other.keeper,
            self.init + other.init,
            self.spawner + other.spawner,
            self.workload + other.workload,
            self.cgroup + other.cgroup,
        )


def is_spawner(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "feather-spawner"
    except OSError:
        return False


def vm_memory(info: dict) -> VmMemory:
    keeper, init = info["state"]["keeper_pid"], info["state"]["init_pid"]
    group = memory_cgroup(info["cgroup"])
    others = [p for p in cgroup_pids(group) if p not in (keeper, init)]
    spawners = [p for p in others if is_spawner(p)]
    workload = [p for p in others if p not in spawners]
    return VmMemory(
        process_memory(keeper),
        process_memory(init),
        processes_memory(spawners),
        processes_memory(workload),
        cgroup_usage(group),
    )


def compare_idle_memory(bench: Bench) -> None:
    f = bench.feather
    info = f.up("idle")
    time.sleep(0.5)
    m = vm_memory(info)
    keeper_parts = pss_parts(info["state"]["keeper_pid"])
    init_parts = pss_parts(info["state"]["init_pid"])
    group = memory_cgroup(info["cgroup"])
    f.remove("idle")
    parts = [[part, mib(keeper_parts[part]), mib(init_parts[part])] for part in PSS_PARTS]
    own = m.own
    rows = [
        [name, mib(x.rss), mib(x.pss), mib(x.uss), mib(x.anon)]
        for name, x in (
            ("keeper", m.keeper),
            ("init (pid 1 in the VM)", m.init),
            ("spawner (init's child, for `PrivateTmp=` units)", m.spawner),
            ("**keeper + init + spawner**", own),
        )
    ]
    ok = own.pss <= IDLE_MEMORY_TARGET
    bench.report.add(
        "3a. Memory of one idle VM",
        "One VM, started and idle (`feather create idle && feather start idle`). From "
        "`/proc/<pid>/smaps_rollup` of its keeper, its init and init's spawner (the one process "
        "of a VM that makes the processes of units with `PrivateTmp=`, docs/services.md): Rss "
        "(all resident pages mapped), Pss "
        "(shared pages divided among their users), private (pages no other process maps, the "
        "feather binary's page-cache pages included) and anonymous (heap and stack: memory that "
        "exists only for this VM).",
        table(["process", "Rss", "Pss", "private", "anonymous"], rows),
        "What the keeper's and init's Pss is made of (from `/proc/<pid>/smaps`): both run "
        "`feather-keeper`, a "
        "binary of their own that links only the VM core (init re-executes it from inside the "
        "VM, then forks the spawner); its pages in the page cache are shared by every VM's "
        "keeper, init and spawner.",
        table(["part", "keeper Pss", "init Pss"], parts),
        f"The VM's memory cgroup (`{group}`) is charged "
        f"{mib(m.cgroup)}: init's and the spawner's pages and the kernel memory charged to it; "
        "the keeper lives outside the VM's cgroup.",
        f"**keeper + init + spawner Pss: {mib(own.pss)}** (target ≤ 1 MiB: {verdict(ok)}); Rss "
        f"{mib(own.rss)}, which counts the shared `feather-keeper` binary and libc pages in "
        f"full; anonymous {mib(own.anon)}. Once the VM is up, each gives back the "
        "pages of `feather-keeper` and of the C library it ran while building the VM and the free "
        "pages of its heap "
        "(crates/feather-vm/src/idle.rs; the pages stay in the page cache, shared and "
        "reclaimable), from inside the function that then polls, so that the code left is "
        "that function's 64 KiB fault-around window (the kernel maps a faulting page's "
        "neighbours with it). The rest is their relocated data (private "
        "to each process), "
        "heap, stacks and the libraries' pages left, shared by every further VM (see 3b).",
    )
    bench.report.target("memory: one idle VM, keeper + init + spawner", "≤ 1 MiB resident", f"Pss {mib(own.pss)} (anonymous {mib(own.anon)}), Rss {mib(own.rss)}", ok)


def bring_up_vms(
    bench: Bench, count: int, prefix: str, then: list[str] | None = None, feather: Feather | None = None,
    one_command: bool = False,
) -> tuple[float, list[dict]]:
    """Creates and starts `count` VMs (and runs `then` in each) in `feather`'s root (the bench's
    own by default), with `create` then `start`, or with `one_command` by `create --start`;
    returns the time and their info."""
    f = feather or bench.feather
    infos = []
    began = time.perf_counter()
    for i in range(count):
        name = f"{prefix}{i:03d}"
        if one_command:
            f("create", "--start", name)
        else:
            f("create", name)
            f("start", name)
        if then:
            f.exec(name, *then)
    elapsed = time.perf_counter() - began
    for i in range(count):
        infos.append(f.inspect(f"{prefix}{i:03d}"))
        f.ids.add(infos[-1]["config"]["id"])
    return elapsed, infos


def tear_down_vms(feather: Feather, infos: list[dict]) -> float:
    began = time.perf_counter()
    for info in infos:
        feather("stop", "--time", "1", info["config"]["name"], check=False)
        feather.remove(info["config"]["name"])
    return time.perf_counter() - began


def unrouted_subnet(vms: int) -> str:
    """The first subnet of 10.96.0.0/11 that holds `vms` VM addresses (beside its network,
    gateway and broadcast addresses) and overlaps no route of the host."""
    prefix = 32 - (vms + 2).bit_length()
    listed = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout)
    routed = [ipaddress.ip_network(r["dst"], strict=False) for r in listed if r.get("dst", "default") != "default"]
    for candidate in ipaddress.ip_network("10.96.0.0/11").subnets(new_prefix=prefix):
        if not any(candidate.overlaps(route) for route in routed):
            return str(candidate)
    raise RuntimeError(f"no /{prefix} of 10.96.0.0/11 is free of the host's routes")


def density_feather(bench: Bench, vms: int) -> Feather:
    """A state root of its own for `vms` VMs with private networks. A root's automatic subnet is
    a /24 (253 VMs; docs/network.md), so this one is given one large enough that the host routes
    nowhere (`FEATHER_SUBNET`, read when the root's first private VM is created)."""
    feather = Feather(bench.feather.binary, bench.work / "density-root", {"FEATHER_SUBNET": unrouted_subnet(vms)})
    bench.on_cleanup("remove the density root's VMs", feather.remove_all)
    return feather


# How many VMs 3b also brings up with two commands each (create, then start), for the time.
TWO_COMMAND_VMS = 200


def compare_idle_density(bench: Bench) -> None:
    n = bench.plan.idle_vms
    feather = density_feather(bench, n)
    two = min(n, TWO_COMMAND_VMS)
    two_elapsed, two_infos = bring_up_vms(bench, two, "pair", feather=feather)
    bench.feather.ids |= feather.ids
    tear_down_vms(feather, two_infos)
    one_settled = settle("density: create --start")
    before, kernel_before = mem_available(), kernel_unreclaimable()
    # One command per VM, as a script bringing up many would (`docker run -d`).
    elapsed, infos = bring_up_vms(bench, n, "idle", feather=feather, one_command=True)
    bench.feather.ids |= feather.ids
    time.sleep(1)
    after, kernel = mem_available(), (kernel_unreclaimable() - kernel_before) / n
    total = VmMemory(Memory(), Memory(), Memory(), Memory(), 0)
    for info in infos:
        m = vm_memory(info)
        total = total + m
    down = tear_down_vms(feather, infos)
    per_vm = total.own.per(n)
    system = (before - after) / n

    # The VMs' teardown goes on after their `rm` (keepers letting go of mounts, the kernel
    # deleting veths and namespaces): bwrap's sandboxes are timed once it is over.
    bwrap_settled = settle("bwrap density")
    bwrap_rows, bwrap_note, bwrap_elapsed = bwrap_density(
        bench, n, lambda i: ["sleep", "infinity"], lambda pid: has_descendant(pid, "sleep")
    )
    rows = [
        [f"feather: {n} idle VMs (`create --start` each)", secs(elapsed), secs(elapsed / n),
         mib(per_vm.pss), mib(per_vm.rss), mib(total.cgroup / n), drop(system), kernel_growth(kernel)],
        [f"feather: {two} idle VMs (`create`, then `start`: two commands each; up before the others, time only)",
         secs(two_elapsed), secs(two_elapsed / two), "—", "—", "—", "—", "—"],
        *bwrap_rows,
    ]  # fmt: skip
    ok = per_vm.pss <= IDLE_MEMORY_TARGET
    bench.report.add(
        f"3b. Density: {n} idle VMs",
        f"{n} VMs brought up one after the other (`feather create --start NAME`, one command "
        f"each), then measured together; before them, {two} VMs brought up with two commands each, "
        "`feather create NAME` then `feather start NAME`, and removed again, for the time. Per VM: Pss of the "
        "keeper, init and init's spawner (the VM's own user-space cost; shared pages divided among all VMs), their "
        "Rss, the VM's memory cgroup, and the drop of the host's MemAvailable divided by the number "
        "of VMs (everything, kernel included: namespaces, mounts, page tables; noisy on a shared "
        "machine), and the growth of the kernel's memory that reclaim cannot give back ("
        f"{' + '.join(KERNEL_UNRECLAIMABLE)} of /proc/meminfo: cgroups, namespaces, mounts, "
        "kernel stacks, page tables; steadier) divided the same way. For bwrap, the same figures over its processes (the outer bwrap and the "
        "pid-1 bwrap) beside the workload. The VMs, each with its private network, are made in a "
        f"state root of their own whose subnet ({feather.env['FEATHER_SUBNET']}) holds them all: a "
        "root's automatic subnet is a /24, 253 VMs (docs/network.md).",
        table(["what", "all up", "per VM", "Pss per VM", "Rss per VM", "cgroup per VM", "MemAvailable drop per VM", "kernel (unreclaimable) per VM"], rows),
        bwrap_note,
        f"Before the {n} VMs (after the {two}'s removal): {one_settled.note().removeprefix('Host as this section started: ')} "
        f"Before bwrap's sandboxes: {bwrap_settled.note().removeprefix('Host as this section started: ')}",
        f"Stopping and removing the {n} VMs took {secs(down)}. **Idle VM Pss (keeper, init, spawner) at "
        f"density: {mib(per_vm.pss)}** (target ≤ 1 MiB: {verdict(ok)}).",
    )
    bench.report.target(f"memory: idle VM among {n}, keeper + init + spawner", "≤ 1 MiB resident", f"Pss {mib(per_vm.pss)}, all-in (MemAvailable) {drop(system)}", ok)
    if bwrap_elapsed:
        ratio = elapsed / bwrap_elapsed
        two_ratio = (two_elapsed / two) / (bwrap_elapsed / n)
        measured = (
            f"{secs(elapsed / n)} vs {secs(bwrap_elapsed / n)} per VM: {ratio:.2f}× "
            f"(`create --start`; `create`, then `start`: {secs(two_elapsed / two)}, {two_ratio:.2f}×)"
        )
        timely = ratio <= DENSITY_TIME_TARGET
    else:
        measured = (
            f"{secs(elapsed)} ({secs(elapsed / n)} per VM, `create --start`; `create`, then "
            f"`start`: {secs(two_elapsed / two)}); no bwrap figure"
        )
        timely = None
    bench.report.target(f"density: time to bring up {n} idle VMs", f"≤ {DENSITY_TIME_TARGET:g}× bwrap sandboxes brought up one after another", measured, timely)


BWRAP_SANDBOX = ["--dev-bind", "/", "/", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup", "--die-with-parent"]  # fmt: skip


def bwrap_density(
    bench: Bench, n: int, workload: Callable[[int], list[str]], ready: Callable[[int], bool]
) -> tuple[list[list[str]], str, float | None]:
    """n bwrap sandboxes, sandbox i running workload(i), up once ready(its pid) holds; returns
    rows for the density table, a note and the time they all took to come up (None if they
    did not)."""
    if not shutil.which("bwrap"):
        return [], "bwrap is not installed: no bwrap density.", None
    before, kernel_before = mem_available(), kernel_unreclaimable()
    sandboxes: list[subprocess.Popen] = []
    bench.on_cleanup("bwrap sandboxes", lambda: [kill_and_reap(p) for p in sandboxes])
    began = time.perf_counter()
    for i in range(n):
        sandboxes.append(
            subprocess.Popen(
                ["bwrap", *BWRAP_SANDBOX, *workload(i)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True,
            )
        )  # fmt: skip
    pending, deadline = list(sandboxes), time.monotonic() + 60
    while pending and time.monotonic() < deadline and all(p.poll() is None for p in sandboxes):
        pending = [p for p in pending if not ready(p.pid)]
        time.sleep(0.005)
    elapsed = time.perf_counter() - began
    dead = [p for p in sandboxes if p.poll() is not None]
    if dead or pending:
        error = dead[0].stderr.read().decode(errors="replace").strip() if dead else "not ready within 60 s"
        for p in sandboxes:
            kill_and_reap(p)
        return [], f"bwrap density failed: {error}", None
    time.sleep(1)
    after, kernel = mem_available(), (kernel_unreclaimable() - kernel_before) / n
    own, work = Memory(), Memory()
    for p in sandboxes:
        tree = [p.pid] + descendants(p.pid)
        own += processes_memory([q for q in tree if comm(q) == "bwrap"])
        work += processes_memory([q for q in tree if comm(q) != "bwrap"])
    for p in sandboxes:
        kill_and_reap(p)
    label = f"bwrap: {n} sandboxes running {workload(0)[0]}"
    per = own.per(n)
    rows = [[label, secs(elapsed), secs(elapsed / n), mib(per.pss), mib(per.rss), "—", drop((before - after) / n), kernel_growth(kernel)]]
    note = (
        f"bwrap command: {code(['bwrap', *BWRAP_SANDBOX, *workload(0)])}: every namespace but the "
        "user namespace (as root, `--unshare-all` maps only uid 0 and nginx could not switch to "
        "its worker user). bwrap's memory columns count its own two processes (outer bwrap and "
        f"pid-1 bwrap); the workload adds {mib(work.per(n).pss)} Pss per sandbox. bwrap gives no "
        "copy-on-write view and no cgroup."
    )
    return rows, note, elapsed


def has_descendant(pid: int, name: str, count: int = 1) -> bool:
    return sum(1 for d in descendants(pid) if comm(d) == name) >= count


def nginx_config(bench: Bench, port: int) -> Path:
    """An nginx configuration under the scratch folder (visible inside VMs), one worker."""
    base = bench.scratch / "nginx"
    (base / "www").mkdir(parents=True, exist_ok=True)
    (base / "www" / "index.html").write_text("<html><body>feather bench</body></html>\n" * 10)
    temp = base / "tmp"
    temp.mkdir(exist_ok=True)
    conf = base / f"nginx-{port}.conf"
    conf.write_text(
        f"""# Written by bench/bench.py: one worker, static file, no logs.
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {base / 'www'};
    }}
}}
"""
    )
    return conf


def nginx_in_vm(conf: Path) -> list[str]:
    """nginx as a daemon inside a VM: its pid file in the VM's private /run."""
    return ["nginx", "-c", str(conf), "-e", "/dev/null", "-g", "pid /run/nginx-bench.pid;"]


def compare_nginx_density(bench: Bench) -> None:
    n = bench.plan.nginx_vms
    if not n:
        bench.report.add("3c. Density: VMs running nginx", "Skipped in --quick mode.")
        return
    conf = nginx_config(bench, 80)
    # What one nginx costs, by itself, on the host: the reference for "beyond nginx".
    host_conf = nginx_config(bench, 18081)
    pid_file = bench.scratch / "nginx-alone.pid"
    run(["nginx", "-c", str(host_conf), "-e", "/dev/null", "-g", f"pid {pid_file};"])
    master = int(pid_file.read_text())
    bench.on_cleanup("host nginx (reference)", lambda: stop_by_pid(master, str(bench.work)))
    alone = processes_memory([master] + descendants(master))
    stop_by_pid(master, str(bench.work))

    before, kernel_before = mem_available(), kernel_unreclaimable()
    elapsed, infos = bring_up_vms(bench, n, "web", nginx_in_vm(conf))
    serving = sum(1 for info in infos if "200" in bench.feather.exec(info["config"]["name"], "bash", "-c", HTTP_PROBE.format(port=80), check=False).stdout)
    time.sleep(1)
    after, kernel = mem_available(), (kernel_unreclaimable() - kernel_before) / n
    own, nginx, cgroup = Memory(), Memory(), 0
    for info in infos:
        m = vm_memory(info)
        own, nginx, cgroup = own + m.own, nginx + m.workload, cgroup + m.cgroup
    tear_down_vms(bench.feather, infos)
    system = (before - after) / n

    bwrap_rows, bwrap_note, _ = bwrap_density(
        bench, n,
        lambda i: ["nginx", "-c", str(conf), "-e", "/dev/null", "-g", f"daemon off; pid {bench.scratch}/bwrap-nginx-{i}.pid;"],
        lambda pid: has_descendant(pid, "nginx", 2),  # master + worker: listening
    )  # fmt: skip
    rows = [
        [f"feather: {n} VMs each running nginx", secs(elapsed), secs(elapsed / n), mib(own.per(n).pss), mib(own.per(n).rss), mib(cgroup / n), drop(system), kernel_growth(kernel)],
        *bwrap_rows,
    ]  # fmt: skip
    bench.report.add(
        f"3c. Density: {n} VMs running nginx",
        f"{n} VMs, each created, started and given its own nginx listening on 127.0.0.1:80 of its own "
        f"network namespace ({code(['feather', 'exec', 'VM', '--', *nginx_in_vm(conf)])}, "
        f"config written by the bench: one worker, a static page). {serving} of {n} answered "
        "HTTP 200 on their own port 80. The per-VM columns count feather's own processes "
        "(keeper, init and spawner), i.e. the memory beyond nginx; the cgroup column includes nginx.",
        table(["what", "all up", "per VM", "Pss beyond nginx", "Rss beyond nginx", "cgroup per VM", "MemAvailable drop per VM", "kernel (unreclaimable) per VM"], rows),
        f"nginx itself, per VM: Pss {mib(nginx.per(n).pss)} (Rss {mib(nginx.per(n).rss)}); one nginx alone on "
        f"the host: Pss {mib(alone.pss)}, Rss {mib(alone.rss)}. All-in cost per VM beyond nginx "
        f"(MemAvailable drop per VM − nginx Pss per VM): {drop(system - nginx.per(n).pss)}.",
        bwrap_note,
    )
    bench.report.target(f"density: {n} VMs running nginx, memory beyond nginx", "≤ 1 MiB per VM (the idle-VM target)", f"Pss {mib(own.per(n).pss)} per VM", own.per(n).pss <= IDLE_MEMORY_TARGET)


def hardware_vm_reference(bench: Bench) -> None:
    bench.report.add(
        "3d. Hardware-VM reference (published, not measured)",
        "This machine's /dev/kvm is a software back-end on which a stock Debian kernel does not "
        "boot, so no hardware VM is measured here. Firecracker's own SPECIFICATION.md "
        "(firecracker-microvm/firecracker) promises, on an i3.metal host for a 2-vCPU, 256 MiB "
        "guest with its tuned kernel:",
        table(["", "Firecracker (published)"], [["boot", FIRECRACKER_BOOT], ["memory", FIRECRACKER_MEMORY], ["VMM process start", FIRECRACKER_VMM_START]]),
        "The guest's own memory (its kernel, its init and its page cache) comes on top of that overhead.",
    )
    bench.report.target("reference: Firecracker (published, not measured)", "boot ≤ 125 ms, overhead ≤ 5 MiB", "see 3d", None)


def vm_processes(bench: Bench, name: str) -> list[dict]:
    """`feather ps NAME --json`: each process's command and host pid."""
    return json.loads(bench.feather("ps", name, "--json").stdout)


def compare_service_manager(bench: Bench) -> None:
    f = bench.feather
    info = f.up("svc")
    f("service", "start", "svc", "nginx")
    time.sleep(0.5)
    processes = vm_processes(bench, "svc")
    manager = [p["host_pid"] for p in processes if p["command"].split()[0].endswith("feather-svcd")]
    nginx = [p["host_pid"] for p in processes if p["command"].startswith("nginx")]
    m = vm_memory(info)
    services = processes_memory(nginx)
    ours = processes_memory(manager)
    f.remove("svc")
    if not manager:
        raise RuntimeError(f"no feather-svcd among the VM's processes: {processes}")
    rows = [
        [name, mib(x.rss), mib(x.pss), mib(x.uss), mib(x.anon)]
        for name, x in (
            ("service manager (`feather-svcd`)", ours),
            (f"nginx ({len(nginx)} processes)", services),
            ("keeper, init and spawner", m.own),
        )
    ]
    ok = ours.pss <= SERVICE_MANAGER_TARGET
    bench.report.add(
        "3e. Memory of a VM's service manager",
        "One VM over `/` running the host's nginx from its own unit file (`feather service start "
        "svc nginx`: the first start also starts the VM's service manager, `feather-svcd`, a "
        "binary of its own beside `feather` that links only the service manager). From "
        "`/proc/<pid>/smaps_rollup`, as in 3a, half a second after nginx was ready.",
        table(["process", "Rss", "Pss", "private", "anonymous"], rows),
        f"**service manager Pss: {mib(ours.pss)}** (target under 2 MiB beside the services: "
        f"{verdict(ok)}); Rss {mib(ours.rss)}, which counts libc and its binary's shared pages "
        f"in full; anonymous (heap, stack) {mib(ours.anon)}.",
    )
    bench.report.target("memory: a VM's service manager, nginx running", "< 2 MiB resident", f"Pss {mib(ours.pss)} (anonymous {mib(ours.anon)}), Rss {mib(ours.rss)}", ok)


# ---------------------------------------------------------------------------------------------
# 4. Run-time overhead


def forget_roots_below(folder: Path) -> None:
    """Removes the host registry's entries of the state roots this run made under `folder`:
    every feather start reads every entry, so a run's roots would cost every later start."""
    for entry in Path("/var/lib/feather-roots").glob("*.json"):
        try:
            root = Path(json.loads(entry.read_text())["dir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if root.is_relative_to(folder):
            entry.unlink(missing_ok=True)


CPU_MARK = "@@feather-bench-cpu"


def reporting_cpu(script: str) -> str:
    """`script`, followed by the shell's `times`: its second line is the CPU time (user, system)
    of every child the shell waited for. Measured where the job runs: a job that `feather exec`
    has the VM's init start is not a child of the caller, so the caller's wait4 rusage does not
    see its CPU time."""
    return f"{script}\necho {CPU_MARK}; times"


def timed_with_cpu(argv: list[str]) -> tuple[float, float, str]:
    """Runs a command whose script ends with `reporting_cpu`'s lines; returns its wall time, the
    CPU time of its job, and its output (without those lines)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, _ = os.wait4(process.pid, 0)
        wall = time.perf_counter() - began
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited with {process.returncode}: {err.read().decode(errors='replace')[-300:]}")
        text = out.read().decode(errors="replace")
        mark = re.search(rf"^{CPU_MARK}\n\S+ \S+\n(\d+)m([\d.]+)s (\d+)m([\d.]+)s$", text, re.M)
        if not mark:
            raise RuntimeError(f"{shlex.join(argv)} reported no CPU time")
        minutes_user, user, minutes_system, system = mark.groups()
        cpu = 60 * (int(minutes_user) + int(minutes_system)) + float(user) + float(system)
        return wall, cpu, text[: mark.start()]


def serve_and_load(bench: Bench, port: int, seconds: int) -> str:
    """A shell script: nginx in the foreground, wrk against it, then nginx stopped, and the CPU
    time of both (the shell waits for them)."""
    conf = nginx_config(bench, port)
    pid = bench.scratch / f"nginx-{port}.pid"
    return reporting_cpu(
        f'nginx -c {conf} -e /dev/null -g "daemon off; pid {pid};" & server=$!; '
        f"sleep 0.3; {shlex.join(wrk_command(port, seconds))}; kill $server; wait"
    )


def wrk_command(port: int, seconds: int) -> list[str]:
    return ["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]


def compare_nginx_throughput(bench: Bench) -> None:
    if not shutil.which("wrk"):
        bench.report.add("4a. nginx throughput", "wrk is not installed: skipped.")
        return
    f = bench.feather
    info = f.up("throughput")
    init = str(info["state"]["init_pid"])
    seconds = bench.plan.wrk_seconds
    variants = [
        ("host", ["sh", "-c", serve_and_load(bench, 18080, seconds)]),
        ("VM", f.cmd("exec", "throughput", "--", "sh", "-c", serve_and_load(bench, 80, seconds))),
        ("a network namespace only", ["unshare", "--net", "sh", "-c", "ip link set lo up; " + serve_and_load(bench, 18081, seconds)]),
        ("the VM's mount namespace only", ["nsenter", "-t", init, "-m", "sh", "-c", serve_and_load(bench, 18082, seconds)]),
    ]  # fmt: skip
    rates: dict[str, list[float]] = {label: [] for label, _ in variants}
    per_cpu: dict[str, list[float]] = {label: [] for label, _ in variants}
    for round_ in range(bench.plan.wrk_rounds):  # taking turns, so that a busy moment hits all
        for label, argv in variants if round_ % 2 == 0 else variants[::-1]:
            _, cpu, out = timed_with_cpu(argv)
            rate, total = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
            if not rate or not total:
                raise RuntimeError(f"{label}: wrk printed no request count: {out[-300:]}")
            rates[label].append(float(rate.group(1)))
            per_cpu[label].append(int(total.group(1)) / cpu)
    f.remove("throughput")
    host, host_cpu = Stats.of(rates["host"]).median, Stats.of(per_cpu["host"]).median
    vm, vm_cpu = Stats.of(rates["VM"]).median, Stats.of(per_cpu["VM"]).median
    ratio, cpu_ratio = vm / host, vm_cpu / host_cpu
    number = lambda x: f"{x:,.0f}"  # noqa: E731
    rows = [
        [label, code(argv), *stat_cells(Stats.of(rates[label]), number), number(Stats.of(per_cpu[label]).median),
         f"{Stats.of(per_cpu[label]).median / host_cpu:.3f}"]
        for label, argv in variants
    ]  # fmt: skip
    tables = run(["nft", "list", "tables"], check=False).stdout.split("\n") if shutil.which("nft") else []
    tables = [t.removeprefix("table ").strip() for t in tables if t.strip()]
    bench.report.add(
        "4a. nginx throughput, in a VM vs on the host",
        "The same nginx configuration (one worker, a static page, no logs; only the port differs) "
        "run in the foreground with wrk beside it in the same place: on the host, inside a VM "
        "(`feather exec`; a VM's network is private for now, so wrk runs inside too), and, to "
        "tell the causes apart, in a bare network namespace and in the VM's mount namespace "
        f"(its overlay) with the host's network. {bench.plan.wrk_rounds} round(s) of {seconds} s "
        "each, taking turns. Requests per CPU-second divides the requests served by the CPU time "
        "of nginx and wrk (their shell's `times` for its waited-for children, read where they run): unlike requests per second, "
        "it does not depend on how much of the 2 cores other work left.",
        table(["where", "command", "min req/s", "median req/s", "max req/s", "requests per CPU-second (median)", "per CPU-second vs host"], rows),
        f"**VM / host, requests per second: {ratio:.3f}** (target ≥ {RUNTIME_TARGET}: "
        f"{verdict(ratio >= RUNTIME_TARGET)}); requests per CPU-second: {cpu_ratio:.3f} "
        f"({verdict(cpu_ratio >= RUNTIME_TARGET)}). nftables tables in the host's network "
        f"namespace during the run (their hooks slow the host's loopback, not the VM's): "
        f"{', '.join(tables) if tables else 'none'}.",
    )
    bench.report.target("run time: nginx requests/s in a VM", f"≥ {RUNTIME_TARGET}× host", f"{ratio:.3f}", ratio >= RUNTIME_TARGET)
    bench.report.target("run time: nginx requests per CPU-second in a VM", f"≥ {RUNTIME_TARGET}× host", f"{cpu_ratio:.3f}", cpu_ratio >= RUNTIME_TARGET)


def interleaved(commands: list[tuple[str, list[str]]], runs: int) -> dict[str, tuple[Stats, Stats]]:
    """Runs the commands in turn, `runs` rounds after one warm-up round, so that other load on
    the machine hits them alike; per command, (wall, CPU) seconds."""
    walls: dict[str, list[float]] = {label: [] for label, _ in commands}
    cpus: dict[str, list[float]] = {label: [] for label, _ in commands}
    for round_ in range(runs + 1):
        order = commands if round_ % 2 else commands[::-1]
        for label, argv in order:
            wall, cpu, _ = timed_with_cpu(argv)
            if round_:
                walls[label].append(wall)
                cpus[label].append(cpu)
    return {label: (Stats.of(walls[label]), Stats.of(cpus[label])) for label, _ in commands}


FILE_OPS = {
    "stat_ns": "path lookup (`stat`), per file",
    "open_close_ns": "open + close, per file",
    "cat_ns": "cat's work (open, fstat, read to the end, close), per file",
    "readdir_ns": "a folder's readdir (opendir, readdir to the end, closedir), per folder",
}


def file_ops(bench: Bench, places: list[tuple[str, list[str]]]) -> dict[str, dict[str, float]]:
    """What each file operation of the job costs in each place (bench/fileops/fileops.c: CPU
    time per operation, nanoseconds), the places taking turns; per place, the median of the
    runs for each operation."""
    files = bench.work / "fileops-list"
    run(["sh", "-c", f"find /usr/share -type f -print0 | head -z -n 20000 > {shlex.quote(str(files))}"], timeout=120)
    inner_rounds, runs = ("1", 1) if bench.plan.quick else ("3", 3)
    figures: dict[str, dict[str, list[float]]] = {label: {op: [] for op in FILE_OPS} for label, _ in places}
    for round_ in range(runs):
        for label, prefix in places if round_ % 2 == 0 else places[::-1]:
            out = run([*prefix, str(bench.fileops), str(files), inner_rounds], timeout=300).stdout
            pairs = dict(word.split("=", 1) for word in out.split())
            for op in FILE_OPS:
                figures[label][op].append(float(pairs[op]))
    files.unlink()
    return {label: {op: Stats.of(values).median for op, values in ops.items()} for label, ops in figures.items()}


def compare_file_job(bench: Bench) -> None:
    f = bench.feather
    info = f.up("files")
    f.up("files-ro", "--ro", "/usr")
    job = ["sh", "-c", reporting_cpu(FILE_JOB)]
    init = str(info["state"]["init_pid"])
    places = [
        ("host", []),
        ("VM (feather exec)", f.cmd("exec", "files", "--")),
        ("VM created with `--ro /usr`", f.cmd("exec", "files-ro", "--")),
        ("the VM's mount namespace only", ["nsenter", "-t", init, "-m"]),
    ]
    commands = [(label, [*prefix, *job]) for label, prefix in places]
    stats = interleaved(commands, bench.plan.file_runs)
    per_op = file_ops(bench, places)
    f.remove("files")
    f.remove("files-ro")
    (h, hc), (v, vc) = stats["host"], stats["VM (feather exec)"]
    ratio, cpu_ratio = h.median / v.median, hc.median / vc.median
    r, rc = stats["VM created with `--ro /usr`"]
    ro_ratio, ro_cpu_ratio = h.median / r.median, hc.median / rc.median
    rows = [[label, code(argv), *stat_cells(stats[label][0]), secs(stats[label][1].median)] for label, argv in commands]
    host_ops, vm_ops = per_op["host"], per_op["VM (feather exec)"]
    micro = lambda ns: f"{ns / 1000:.2f} µs"  # noqa: E731
    op_rows = [
        [what, *(micro(per_op[label][op]) for label, _ in places),
         f"{(vm_ops[op] - host_ops[op]) / 1000:+.2f} µs ({vm_ops[op] / host_ops[op]:.2f}×)"]
        for op, what in FILE_OPS.items()
    ]  # fmt: skip
    cat_extra = vm_ops["cat_ns"] - host_ops["cat_ns"]
    bench.report.add(
        "4b. A file-heavy job, in a VM vs on the host",
        f"Reads 20 000 files of /usr/share and checksums them all ({code(FILE_JOB)}); in the VM "
        "every one is read through the overlay. The page cache is warm (one warm-up round; "
        "overlayfs reads share the host's page cache). The commands take turns, "
        f"{bench.plan.file_runs} rounds. CPU is user + system time of the job and everything it "
        "waited for (its shell's `times`, read where it runs). The third row runs the job in the VM's mount namespace only "
        "(nsenter, no cgroup, pid or network namespace): the overlay's share of the difference. "
        "The VM created with `--ro /usr` sees /usr as a read-only bind of the host's instead of "
        "through its layer (no overlay lookups there; writes there fail).",
        table(["where", "command", "min", "median", "max", "median CPU"], rows),
        f"**host / VM, wall-clock median: {ratio:.3f}** (target ≥ {RUNTIME_TARGET}: "
        f"{verdict(ratio >= RUNTIME_TARGET)}); CPU time: {cpu_ratio:.3f} "
        f"({verdict(cpu_ratio >= RUNTIME_TARGET)}). The VM figures include `feather exec` itself "
        "(see section 2). "
        f"**With `--ro /usr`: {ro_ratio:.3f}** wall clock ({verdict(ro_ratio >= RUNTIME_TARGET)}), "
        f"{ro_cpu_ratio:.3f} CPU time ({verdict(ro_cpu_ratio >= RUNTIME_TARGET)}).",
        "Where the difference goes, operation by operation: bench/fileops/fileops.c goes "
        "through the job's files and their folders in each place, one kind of operation at a "
        "time, and reports its CPU time per operation (medians; the places take turns; page "
        "cache and dentries warm):",
        table(["operation", *(label for label, _ in places), "VM − host"], op_rows),
        f"Reading a file as cat does costs {cat_extra / 1000:.2f} µs more CPU through the overlay "
        f"than on the host: {cat_extra * 20_000 / 1e6:.0f} ms for the job's 20 000 files, "
        f"{cat_extra * 20_000 / 1e9 / hc.median:.0%} of the host job's CPU time. "
        "Which kernel functions take it (overlayfs's permission check on every path component, "
        "the second file it opens on the real inode, its getattr), and the overlay mount options "
        "and layer filesystems measured against it: docs/design.md, \"The overlay's cost per "
        "file\".",
    )
    bench.report.target("run time: file-heavy job in a VM created with `--ro /usr` (wall clock)", f"≥ {RUNTIME_TARGET}× host", f"{ro_ratio:.3f}", ro_ratio >= RUNTIME_TARGET)
    bench.report.target("run time: file-heavy job in a VM created with `--ro /usr` (CPU time)", f"≥ {RUNTIME_TARGET}× host", f"{ro_cpu_ratio:.3f}", ro_cpu_ratio >= RUNTIME_TARGET)
    bench.report.target("run time: file-heavy job in a VM (wall clock)", f"≥ {RUNTIME_TARGET}× host", f"{ratio:.3f}", ratio >= RUNTIME_TARGET)
    bench.report.target("run time: file-heavy job in a VM (CPU time)", f"≥ {RUNTIME_TARGET}× host", f"{cpu_ratio:.3f}", cpu_ratio >= RUNTIME_TARGET)


# ---------------------------------------------------------------------------------------------
# 5. Copy-on-write costs

# First and second write of one byte, timed inside the process that writes.
WRITE_TIMER = (
    "import os, sys, time\n"
    "def write(path, offset):\n"
    "    t = time.perf_counter(); fd = os.open(path, os.O_WRONLY); os.pwrite(fd, b'x', offset)\n"
    "    os.close(fd); return time.perf_counter() - t\n"
    "print(write(sys.argv[1], 0), write(sys.argv[1], 1))\n"
)


def make_file(path: Path, size: int) -> None:
    chunk = os.urandom(MIB)
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def compare_copy_up(bench: Bench) -> None:
    f = bench.feather
    size = bench.plan.cow_mib * MIB
    python = ["/usr/bin/python3", "-I", "-S", "-c", WRITE_TIMER]
    f.up("cow")
    vm_first, vm_second, host_first, copy = [], [], [], []
    for i in range(bench.plan.cow_runs):
        vm_file, host_file = bench.scratch / f"big-vm-{i}.bin", bench.scratch / f"big-host-{i}.bin"
        make_file(vm_file, size)
        make_file(host_file, size)
        first, second = map(float, f.exec("cow", *python, str(vm_file)).stdout.split())
        vm_first.append(first)
        vm_second.append(second)
        host_first.append(float(run([*python, str(host_file)]).stdout.split()[0]))
        target = bench.scratch / f"copy-{i}.bin"
        elapsed, _ = timed(["sh", "-c", f'cp --reflink=never "$1" "$2" && sync "$2"', "sh", str(vm_file), str(target)])
        copy.append(elapsed)
        for path in (vm_file, host_file, target):
            path.unlink()
    f.remove("cow")
    rows = [
        ["first write in a VM (copy-up)", *stat_cells(Stats.of(vm_first))],
        ["second write in the VM", *stat_cells(Stats.of(vm_second))],
        ["first write on the host", *stat_cells(Stats.of(host_first))],
        [f"host: `cp` of the file + `sync` (what a copy costs)", *stat_cells(Stats.of(copy))],
    ]
    vm_median = Stats.of(vm_first).median
    bench.report.add(
        f"5a. Copy-up: first write to a {bench.plan.cow_mib} MiB host file",
        f"A {bench.plan.cow_mib} MiB file made by the bench in its scratch folder on the host; one "
        "byte written at offset 0 (open for writing + pwrite), timed inside the writing process "
        f"(`/usr/bin/python3`). Inside a VM the open copies the whole file up into the VM's layer "
        f"(overlayfs copies and syncs it); the host writes in place. {bench.plan.cow_runs} files, "
        "each written once.",
        table(["what", "min", "median", "max"], rows),
        f"Copy-up throughput: {size / MIB / vm_median:,.0f} MiB/s; first write in a VM / on the host: "
        f"{times(vm_median / Stats.of(host_first).median)}; copy-up / plain copy: "
        f"{times(vm_median / Stats.of(copy).median)}. No target in the issues: this is the price of "
        "copy-on-write, paid once per file.",
    )


def make_base_tree(path: Path, files: int, in_vm: int) -> None:
    """A bare root tree: busybox as the shell; `in_vm` small files under /data/vm (the VM edits
    these itself) and the rest under /data/host (edited through the upper layer)."""
    (path / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", path / "bin" / "busybox")
    (path / "bin" / "sh").symlink_to("busybox")
    for i in range(files):
        folder = path / "data" / ("vm" if i < in_vm else "host")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}").write_text(f"old {i}\n")


def edit_through_upper(base: Path, upper: Path) -> None:
    """What a VM's appends to /data/host/* leave in its upper layer: a copy of each file with
    the new line, under folders with the base's modes. Written from the host, so that the
    comparison does not wait for thousands of copy-ups (5a and the row above time those)."""
    for folder in ("data", "data/host"):
        (upper / folder).mkdir(exist_ok=True)
        shutil.copymode(base / folder, upper / folder)
    for source in (base / "data" / "host").iterdir():
        target = upper / "data" / "host" / source.name
        target.write_text(source.read_text() + "new\n")
        shutil.copystat(source, target)
        os.utime(target)  # its time is now: written after the base, as a VM's edit is


def compare_commit(bench: Bench) -> None:
    f = bench.feather
    n, k = bench.plan.commit_files, bench.plan.copy_up_files
    append = 'for f in /data/vm/*; do echo new >> "$f"; done'
    change, diff, commit, rsync, rsync_fsync = [], [], [], [], []
    for round_ in range(bench.plan.commit_rounds):
        if round_ and bench.time_left() < 3 * max(commit):
            log(f"diff and commit: round {round_ + 1} skipped to stay within the time budget")
            break
        base, copy1, copy2 = (bench.scratch / f"{name}-{round_}" for name in ("base", "rsync", "rsync-fsync"))
        for tree in (base, copy1, copy2):
            make_base_tree(tree, n, k)
        name = f"commit{round_}"
        info = f.up(name, "--base", str(base))
        upper = Path(info["layers"][0]["upper"])
        change.append(timed(f.cmd("exec", "-w", "/", name, "--", "/bin/sh", "-c", append))[0])
        f("stop", "--time", "1", name)
        edit_through_upper(base, upper)
        elapsed, listing = timed(f.cmd("diff", name))
        diff.append(elapsed)
        changed = sum(1 for line in listing.stdout.splitlines() if re.search(r"/data/(vm|host)/f", line))
        if changed != n:
            raise RuntimeError(f"feather diff listed {changed} changed files under /data, expected {n}")
        rsync.append(timed(["rsync", "-a", f"{upper}/", f"{copy1}/"])[0])
        rsync_fsync.append(timed(["rsync", "-a", "--fsync", f"{upper}/", f"{copy2}/"])[0])
        commit.append(timed(f.cmd("commit", name))[0])
        for edited in (base / "data" / "vm" / "f00000", base / "data" / "host" / f"f{n - 1:05d}"):
            if not edited.read_text().endswith("new\n"):
                raise RuntimeError(f"feather commit did not apply the change to {edited}")
        f.remove(name)
        for tree in (base, copy1, copy2):
            shutil.rmtree(tree)
    per_copy_up = Stats.of(change).median / k
    rows = [
        [f"in the VM: append a line to {k:,} files (a copy-up each)", code(["feather", "exec", "VM", "--", "sh", "-c", append]), *stat_cells(Stats.of(change))],
        [f"feather diff ({n:,} changed files)", code(["feather", "diff", "VM"]), *stat_cells(Stats.of(diff))],
        ["feather commit (fsync per file, atomic rename)", code(["feather", "commit", "VM"]), *stat_cells(Stats.of(commit))],
        ["rsync -a of the same upper layer", code(["rsync", "-a", "UPPER/", "COPY/"]), *stat_cells(Stats.of(rsync))],
        ["rsync -a --fsync of the same upper layer", code(["rsync", "-a", "--fsync", "UPPER/", "COPY/"]), *stat_cells(Stats.of(rsync_fsync))],
    ]  # fmt: skip
    c, r, rf = Stats.of(commit).median, Stats.of(rsync).median, Stats.of(rsync_fsync).median
    bench.report.add(
        f"5b. diff and commit of {n:,} changed files",
        f"A scratch base tree (busybox and {n:,} small files); a VM over it (`--base`) appends a "
        f"line to {k:,} of them itself; the other {n - k:,} are edited the same way through its "
        "upper layer from the host while it is stopped (the same result, without waiting for "
        f"{n - k:,} more copy-ups). Then `feather diff` lists the {n:,} changes and `feather "
        "commit` applies them to the base; rsync copies the same upper layer onto copies of the "
        f"base tree. {len(commit)} round(s), each on fresh trees.",
        table(["what", "command", "min", "median", "max"], rows),
        f"commit / rsync -a: {times(c / r)}; commit / rsync -a --fsync: {times(c / rf)}. A copy-up "
        f"of a small file costs {secs(per_copy_up)} in the VM: overlayfs syncs every copied-up file "
        "to disk (unless mounted `volatile`). No target in the issues.",
    )


# ---------------------------------------------------------------------------------------------
# 6. What else issue 8 lists


def compare_network_namespace(bench: Bench) -> None:
    floor_dir = bench.work / "floor-scratch"
    floor_dir.mkdir(exist_ok=True)
    base = ["unshare", "--mount", "--pid", "--fork", "--ipc", "--uts", "--cgroup"]
    commands = [
        ("unshare without --net", base + ["/bin/true"]),
        ("unshare with --net", base + ["--net", "/bin/true"]),
        ("floor without a network namespace", [str(bench.floor), "--no-net", str(floor_dir), "/bin/true"]),
        ("floor with a network namespace", [str(bench.floor), str(floor_dir), "/bin/true"]),
    ]
    f = bench.feather
    feather_runs = [
        ("feather run --rm --net host", f.cmd("run", "--rm", "--net", "host", "--", "/bin/true")),
        ("feather run --rm --net none", f.cmd("run", "--rm", "--net", "none", "--", "/bin/true")),
        ("feather run --rm --net private, the root's only VM", f.cmd("run", "--rm", "--net", "private", "--", "/bin/true")),
    ]  # fmt: skip
    stats = bench.hyperfine(commands + feather_runs)
    # With another VM of the root running, the bridge and the nftables tables already exist.
    f.up("net-neighbour")
    shared = ("feather run --rm --net private, another VM running", f.cmd("run", "--rm", "--net", "private", "--", "/bin/true"))
    stats.update(bench.hyperfine([feather_runs[1], shared]))
    f.remove("net-neighbour")
    commands += feather_runs + [shared]
    rows = [[label, code(argv), *stat_cells(stats[label])] for label, argv in commands]
    cost_unshare = stats["unshare with --net"].median - stats["unshare without --net"].median
    cost_floor = stats["floor with a network namespace"].median - stats["floor without a network namespace"].median
    none = stats["feather run --rm --net none"].median
    alone = stats["feather run --rm --net private, the root's only VM"].median
    beside = stats["feather run --rm --net private, another VM running"].median
    bench.report.add(
        "6. Network namespace cost",
        "The peer figure: the same start with and without a new network namespace. feather's: "
        "`--net host` (no namespace), `none` (loopback only), `private` (veth pair to the state "
        "root's bridge, address, route, nftables entries; see docs/network.md) — for the root's "
        "only VM, which also makes and removes the bridge and its tables, and beside a running VM "
        "of the same root (the `none` row is timed again alongside it).",
        table(["what", "command", "min", "median", "max"], rows),
        f"A network namespace adds {secs(cost_unshare)} to unshare's median and {secs(cost_floor)} "
        f"to the floor's on this kernel. A throw-away feather VM's median: {secs(none)} with "
        f"`--net none`, {secs(beside)} with `--net private` beside a running VM, {secs(alone)} as "
        "the root's only VM. The slow end of a private network (the kernel deleting the veth "
        "and the namespace, waiting for RCU grace periods) is no longer waited for: `run --rm` "
        "reports the exit status and hands that teardown to a process of its own, and the "
        "root's bridge and tables linger 150 ms for the next throw-away VM instead of being "
        "removed and made again by `nft` on every run (docs/network.md).",
        "Service start-to-ready against a direct start is measured by `cargo bench -p feather "
        "--bench services` (bench/README.md); the service manager's memory is in 3e. IPC "
        "hardening's share of the start time is not measured yet.",
    )


# Shuttle (issue 6): a channel's target serves with bench/shuttle_probe.py inside its VM.
SHUTTLE_POLICY = """\
ipc unix:/run/bench/sink.sock src sink allow
ipc tcp:9000 src sink allow
ipc tcp:6379 src cache allow start=redis-server
"""
CHANNEL_TARGET = 0.9  # forwarded bulk throughput / direct


def compare_shuttle(bench: Bench) -> None:
    f = bench.feather
    probe = bench.scratch / "shuttle_probe.py"
    shutil.copy(REPO / "bench" / "shuttle_probe.py", probe)
    policy_dir = f.root / "policy.d"
    policy_dir.mkdir(parents=True, exist_ok=True)
    (policy_dir / "50-bench.policy").write_text(SHUTTLE_POLICY)
    # Removed at the end of this comparison, however it ends: no later comparison's VMs get
    # channels.
    try:
        measure_shuttle(bench, ["/usr/bin/python3", str(probe)])
    finally:
        shutil.rmtree(policy_dir, ignore_errors=True)


# The kernel carrying a channel's bytes itself (a BPF sockmap redirect) instead of the broker's
# splice: bench/sockmap/sockmap_probe.c plays a channel's four sockets in one process on the
# host and prints one tab-separated line per (socket kind, path); see its header.
SOCKMAP_PATHS = {
    "direct": "direct (client connected to the server)",
    "splice": "splice through the broker (what channels do)",
    "verdict": "sk_skb stream verdict, redirected out of the broker's other socket",
    "verdict+4MiB": "the same, the broker's sockets with 4 MiB send buffers",
    "msg": "sk_msg on the client's sends, into the server's receive side",
}


def sockmap_redirect_check(bench: Bench, mib: int, runs: int) -> list[str]:
    """Report parts: the probe's medians over `runs` runs, or why it could not run."""
    binary = bench.work / "sockmap_probe"
    source = REPO / "bench" / "sockmap" / "sockmap_probe.c"
    failed = try_once(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source), "-lpthread"])
    lines: dict[tuple[str, str], list[list[str]]] = {}
    for _ in range(runs):
        if failed:
            break
        result = run([str(binary), str(mib)], timeout=600, check=False)
        if result.returncode != 0:
            failed = f"exit status {result.returncode}: {why(result)}"
            break
        for line in result.stdout.splitlines():
            if line and not line.startswith("#"):
                kind, path, *rest = line.split("\t")
                lines.setdefault((kind, path), []).append(rest)
    intro = (
        "Could the kernel carry a channel's bytes instead of the broker (issue 15)? "
        "bench/sockmap/sockmap_probe.c plays a channel's four sockets in one process on the host "
        "(the VM's client, the broker's two, the target's server) and sends from client to "
        "server; the redirects use one SOCKHASH and one hand-assembled program keyed by socket "
        "cookie, as one broker would. *Arrived*: whether the server had every byte, in order, "
        "before the end the broker passed on. *No reader*: how much a client got rid of into a "
        "server that reads nothing (a 256 MiB cap means no flow control: the bytes wait in the "
        "host kernel's memory). Why channels keep splicing: docs/shuttle.md, \"Why the bytes "
        "still pass through the broker\"."
    )
    if failed:
        return [intro, f"The probe could not run here: {failed}"]

    def arrived(values: list[str]) -> str:
        lost = [v for v in values if v != "all"]
        if not lost:
            return "every byte" if values[0] == "all" else values[0]
        if "not-run" in values:
            return "the program does not run for unix sends"
        if "changed" in values:
            return f"**{values.count('changed')} of {len(values)} runs changed bytes**"
        missing = ", ".join(v.removeprefix("lost:") + " B" for v in lost)
        return f"**{len(lost)} of {len(values)} runs lost bytes** ({missing})"

    def pushed(values: list[str]) -> str:
        if values[0] == "-":
            return "—"
        capped = [v for v in values if v.startswith("cap")]
        if capped:
            return f"**≥ {int(capped[0].removeprefix('cap')) // 1024} MiB: no flow control**"
        return f"{max(int(v) for v in values)} KiB"

    rows = []
    for (kind, path), values in lines.items():
        mibs, rates, arrivals, pushes = zip(*values)
        rate = "—" if rates[0] == "-" else f"{statistics.median(float(r) for r in rates):.0f}"
        rows.append([
            "unix" if kind == "unix" else "TCP", SOCKMAP_PATHS.get(path, path),
            mibs[0].replace("-", "—"), rate, arrived(list(arrivals)), pushed(list(pushes)),
        ])  # fmt: skip
    return [
        intro,
        table(["socket", "path", "MiB sent", f"MiB/s (median of {runs})", "arrived", "no reader"], rows),
    ]


def measure_shuttle(bench: Bench, python: list[str]) -> None:
    f = bench.feather
    f.up("sink")
    f.exec("sink", "sh", "-c", shlex.join([*python, "serve", "/run/bench/sink.sock", "9000"]) + " >/dev/null 2>&1 </dev/null &")
    deadline = time.monotonic() + 10
    while f.exec("sink", "test", "-S", "/run/bench/sink.sock", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the probe server did not listen in VM sink")
        time.sleep(0.05)
    f.up("src")
    mib = 256 if bench.plan.quick else 1024
    rounds = 3 if bench.plan.quick else 5
    pings = 2000 if bench.plan.quick else 10000
    paths = [
        ("unix socket, direct (client in the target VM)", "sink", "unix:/run/bench/sink.sock"),
        ("unix socket, through a channel from another VM", "src", "unix:/run/bench/sink.sock"),
        ("TCP, direct (the target VM's loopback)", "sink", "tcp:9000"),
        ("TCP, through a channel from another VM", "src", "tcp:9000"),
    ]  # fmt: skip
    up: dict[str, list[float]] = {label: [] for label, _, _ in paths}
    down: dict[str, list[float]] = {label: [] for label, _, _ in paths}
    # CPU seconds per GiB sent: client, server, and src's keeper (the broker; idle otherwise).
    cpu: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _, _ in paths}
    keeper = int(f.inspect("src")["state"]["keeper_pid"])

    def keeper_cpu() -> float:
        fields = Path(f"/proc/{keeper}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    for round_ in range(rounds):
        for label, vm, address in paths if round_ % 2 == 0 else paths[::-1]:
            before = keeper_cpu()
            seconds, client, server = map(float, f.exec(vm, *python, "bulk", address, str(mib)).stdout.split())
            broker = keeper_cpu() - before if vm == "src" else 0.0
            up[label].append(mib / seconds)
            cpu[label].append(tuple(value * 1024 / mib for value in (client, server, broker)))
            down[label].append(mib / float(f.exec(vm, *python, "pull", address, str(mib)).stdout))
    latency = {}
    for label, vm, address in paths:
        median, p99 = f.exec(vm, *python, "ping", address, str(pings)).stdout.split()
        latency[label] = (float(median), float(p99))
    rows = []
    for label, vm, address in paths:
        client, server, broker = (statistics.median(c[i] for c in cpu[label]) for i in range(3))
        rows.append([
            label, f"`{address}`",
            f"{statistics.median(up[label]):.0f}", f"{statistics.median(down[label]):.0f}",
            f"{client:.2f} + {server:.2f}" + (f" + {broker:.2f}" if vm == "src" else ""),
            f"{latency[label][0]:.1f}", f"{latency[label][1]:.1f}",
        ])  # fmt: skip
    def cpu_total(label: str) -> float:
        return statistics.median(sum(c) for c in cpu[label])

    ratios, cpu_ratios = {}, {}
    for kind, direct, forwarded in [("unix", paths[0][0], paths[1][0]), ("TCP", paths[2][0], paths[3][0])]:
        cpu_ratios[kind] = cpu_total(direct) / cpu_total(forwarded)
        ratios[kind] = (
            statistics.median(up[forwarded]) / statistics.median(up[direct]),
            statistics.median(down[forwarded]) / statistics.median(down[direct]),
        )
        worst = min(ratios[kind])
        bench.report.target(
            f"Shuttle {kind} channel bulk throughput", f"≥ {CHANNEL_TARGET} of direct",
            f"{ratios[kind][0]:.2f} (to the target), {ratios[kind][1]:.2f} (back)", worst >= CHANNEL_TARGET,
        )  # fmt: skip

    # Dependencies: redis in VM cache, started by the first connection through the channel,
    # against starting it by hand and asking the same question.
    f("create", "cache")
    info = f.inspect("cache")
    f.ids.add(info["config"]["id"])
    on_demand, by_hand = [], []
    for _ in range(rounds):
        seconds, result = timed(f.cmd("exec", "src", "--", "redis-cli", "-p", "6379", "ping"))
        if result.stdout.strip() != "PONG":
            raise RuntimeError(f"no PONG through the channel: {why(result)}")
        on_demand.append(seconds)
        f("stop", "cache")
        started = time.perf_counter()
        f("start", "cache")
        f("service", "start", "cache", "redis-server")
        f.exec("cache", "redis-cli", "ping")
        by_hand.append(time.perf_counter() - started)
        f("stop", "cache")
    demand, hand = Stats.of(on_demand), Stats.of(by_hand)
    redirect = sockmap_redirect_check(bench, mib, 1 if bench.plan.quick else 3)
    bench.report.add(
        "7. Shuttle: IPC channels and dependencies",
        "Bulk transfer (MiB/s, medians of "
        f"{rounds} rounds of {mib} MiB each way, the paths taking turns) and 64-byte round trips "
        f"(µs, median and 99th percentile of {pings}) between bench/shuttle_probe.py's client and "
        "server, both Python with 1 MiB buffers. Direct: the client runs in the target VM itself "
        "and connects to the server's own socket. Through a channel: the client runs in VM src, "
        "whose broker (in src's keeper, outside both VMs) accepts at the same path or port in src, "
        "asks the gate, connects into VM sink and splices the bytes across (docs/shuttle.md). "
        "Policy:\n\n```\n" + SHUTTLE_POLICY + "```",
        table(
            ["path", "address", "to the target MiB/s", "back MiB/s",
             "CPU s per GiB to the target: client + server (+ broker)", "round trip µs", "p99 µs"],
            rows,
        ),  # fmt: skip
        f"Through a channel / direct: unix {ratios['unix'][0]:.2f} to the target and "
        f"{ratios['unix'][1]:.2f} back; TCP {ratios['TCP'][0]:.2f} and {ratios['TCP'][1]:.2f}. "
        f"In CPU time per GiB (all parties, direct / through a channel): unix "
        f"{cpu_ratios['unix']:.2f}, TCP {cpu_ratios['TCP']:.2f}. "
        "The broker's own CPU (src's keeper: accept, gate, splice) is the last CPU figure; on a "
        "machine with two cores the client, the broker and the server take turns on them, which "
        "is where most of the throughput goes, more so while other work shares the cores (load "
        "average in the machine section).",
        *redirect,
        table(
            ["dependency (redis-server in VM cache)", "min", "median", "max"],
            [
                ["on demand: `feather exec src -- redis-cli ping` with cache stopped (the channel "
                 "starts cache and redis-server, then the connection goes through)", *stat_cells(demand)],
                ["by hand: `feather start cache`, `feather service start cache redis-server`, "
                 "`feather exec cache -- redis-cli ping`", *stat_cells(hand)],
            ],
        ),  # fmt: skip
    )

# ---------------------------------------------------------------------------------------------


def compare_web(bench: Bench) -> None:
    """feather web: how long the VM table of 100 running VMs takes to appear in a browser
    (chromium through Selenium; from the start of the page's navigation until every row is
    there), and what the server costs while 5 tabs stay open and nothing changes but the VMs'
    own figures (the table is read once a second for all tabs)."""
    from selenium import webdriver  # Debian's python3-selenium, installed with the peers
    from selenium.webdriver.chrome.service import Service

    f = bench.feather
    count = 30 if bench.plan.quick else 100
    names = [f"web{i}" for i in range(count)]
    for name in names:
        f.up(name, "--net", "none")
    server = subprocess.Popen(f.cmd("web", "--listen", "127.0.0.1:0"), stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().split()[-1]
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        renders, idle, seconds = measure_web(bench, driver, server, url, count)
    finally:
        driver.quit()
        kill_and_reap(server, signal.SIGTERM)
        for name in names:
            f.remove(name)
    render = Stats.of(renders)
    bench.report.add(
        "Web view",
        f"{count} running VMs (`--net none`), `feather web` serving the state root, Debian's "
        "chromium (headless) through Selenium. *Table*: from the start of loading the page until "
        f"all {count} rows are there, {len(renders)} loads. *Idle*: the server's CPU time over "
        f"{seconds} s with 5 tabs open and live, as a share of one core.",
        table(["what", "min", "median", "max"], [["table of the VMs", *stat_cells(render)]]),
        f"Server idle with 5 tabs: {idle * 100:.2f}% of a core.",
    )
    bench.report.target(
        f"web view: table of {count} VMs", "< 300 ms", secs(render.median), render.median < WEB_TABLE_TARGET
    )
    bench.report.target("web view: server idle, 5 tabs", "< 1% of a core", f"{idle * 100:.2f}%", idle < WEB_IDLE_TARGET)


def measure_web(bench: Bench, driver, server: subprocess.Popen, url: str, count: int) -> tuple[list[float], float, int]:
    from selenium.webdriver.common.by import By

    base = url.split("/login")[0]

    def rows() -> int:
        return len(driver.find_elements(By.CSS_SELECTOR, "table.vms tr[data-vm]"))

    driver.get(url)
    renders = []
    for _ in range(3 if bench.plan.quick else 10):
        driver.get(base + "/")
        deadline = time.monotonic() + 30
        while rows() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the page never showed {count} VMs")
            time.sleep(0.005)
        renders.append(driver.execute_script("return performance.now()") / 1000)

    def server_cpu() -> float:
        fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    seconds = 10 if bench.plan.quick else 30
    for _ in range(4):  # five tabs in all
        driver.switch_to.new_window("tab")
        driver.get(base + "/")
    time.sleep(2)  # the tabs load and subscribe
    before, started = server_cpu(), time.monotonic()
    time.sleep(seconds)
    idle = (server_cpu() - before) / (time.monotonic() - started)
    return renders, idle, seconds


# ---------------------------------------------------------------------------------------------
# 8. feather-oci as an OCI runtime (issue 14), against runc in the same engines

CTR_TARGET = 1.1  # ctr run --rm with feather-oci within 1.1x the same with runc
DOCKER_TARGET = 1.1  # docker run --rm likewise
RUNTIME_TARGET_OCI = 0.5  # the runtime's own create+start+delete at most 0.5x runc's
OCI_IMAGE = "docker.io/library/feather-bench-busybox:1"
BUSYBOX_APPLETS = ["sh", "true", "sleep", "cat", "echo"]


def busybox_rootfs(root: Path) -> None:
    """A minimal root: busybox-static and a few applets (the tests' image, tests/oci/support.rs)."""
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "root"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")


def oci_image_tar(folder: Path, name: str) -> tuple[Path, Path]:
    """An OCI image layout tar of the busybox root named `name` (`ctr images import`), and the
    layer tar itself (`docker import`)."""
    import hashlib

    rootfs, layout = folder / "image-rootfs", folder / "layout"
    busybox_rootfs(rootfs)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer = folder / "layer.tar"
    run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(layer), "."])

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer_blob = blob(layer.read_bytes())
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_blob["digest"]]},
    }).encode())  # fmt: skip
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_blob}],
    }).encode())  # fmt: skip
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
                       "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"}}],
    }))  # fmt: skip
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    image = folder / "image.tar"
    run(["tar", "-C", str(layout), "-cf", str(image), "."])
    return image, layer


def start_daemon(bench: Bench, name: str, argv: list[str], ready: list[str], log_file: Path) -> subprocess.Popen:
    """A daemon of the run's own (containerd, dockerd); stopped by its pid at the end."""
    with open(log_file, "w") as log_out:
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_out, stderr=log_out)
    bench.on_cleanup(f"stop {name}", lambda: stop_by_pid(daemon.pid, str(bench.work), grace=15))
    deadline = time.monotonic() + 60
    while try_once(ready, timeout=20) is not None:
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not come up: {' / '.join(log_file.read_text().splitlines()[-3:])}")
        time.sleep(0.2)
    return daemon


def remove_cgroup_parent(name: str) -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        try:
            (hierarchy / name).rmdir()
        except OSError:
            pass


def oci_runtime_bundle(folder: Path, runtime: str) -> Path:
    """A busybox bundle running `true`, with the config `runc spec` writes."""
    bundle = folder / "bundle"
    busybox_rootfs(bundle / "rootfs")
    run([runtime, "spec"], cwd=bundle)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = ["/bin/true"]
    spec["process"]["terminal"] = False
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    return bundle


def lifecycle_command(runtime: str, root: Path, bundle: Path, name: str) -> list[str]:
    """create + start + delete of one container, as an engine does them (three calls)."""
    r = f"{shlex.quote(runtime)} --root {shlex.quote(str(root))}"
    script = (
        f"{r} create --bundle {shlex.quote(str(bundle))} {name} && {r} start {name} && "
        f"{r} delete --force {name}"
    )
    return ["sh", "-c", script]


def oci_ctr(bench: Bench, folder: Path, feather_oci: str, image: Path) -> tuple[list, dict[str, Stats]]:
    socket = folder / "containerd.sock"
    namespace = f"feather-bench-{os.getpid()}"
    config = folder / "containerd.toml"
    config.write_text(
        f'version = 2\nroot = "{folder / "containerd-root"}"\nstate = "{folder / "containerd-state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
    )
    ctr = ["ctr", "-a", str(socket), "-n", namespace]

    def forget_namespace() -> None:
        for listed in ("containers", "tasks"):
            for line in run(ctr + [listed, "ls", "-q"], check=False).stdout.split():
                run(ctr + ["task", "delete", "-f", line], check=False)
                run(ctr + ["containers", "rm", line], check=False)
        shutil.rmtree(Path("/run/containerd/runc") / namespace, ignore_errors=True)
        remove_cgroup_parent(namespace)

    start_daemon(bench, "containerd", ["containerd", "--config", str(config)], ctr + ["version"], folder / "containerd.log")
    bench.on_cleanup("remove containerd's containers", forget_namespace)
    run(ctr + ["images", "import", str(image)])
    commands = [
        ("ctr run --rm, runc", ctr + ["run", "--rm", "--runc-binary", shutil.which("runc") or "runc", OCI_IMAGE, "bench-runc", "true"]),
        ("ctr run --rm, feather-oci", ctr + ["run", "--rm", "--runc-binary", feather_oci, OCI_IMAGE, "bench-feather", "true"]),
    ]  # fmt: skip
    for _, argv in commands:
        problem = try_once(argv, timeout=120)
        if problem:
            raise RuntimeError(f"{code(argv)}: {problem}")
    return commands, bench.hyperfine(commands)


def oci_docker(bench: Bench, folder: Path, feather_oci: str, layer: Path) -> tuple[list, dict[str, Stats]]:
    # dockerd as tests/oci starts it: roots of the run's own, no iptables or bridge, nofile 1024
    # (this machine withholds CAP_SYS_RESOURCE), cgroupfs, feather-oci as the runtime "feather".
    socket = folder / "docker.sock"
    exec_root = Path(f"/tmp/feather-bench-dx-{os.getpid()}")  # containerd's socket: short path
    namespace = exec_root.name
    config = folder / "daemon.json"
    config.write_text(json.dumps({
        "data-root": str(folder / "docker-data"), "exec-root": str(exec_root),
        "pidfile": str(folder / "docker.pid"), "hosts": [f"unix://{socket}"],
        "iptables": False, "ip6tables": False, "bridge": "none",
        "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 1024, "Soft": 1024}},
        "runtimes": {"feather": {"path": feather_oci}},
        "exec-opts": ["native.cgroupdriver=cgroupfs"],
        "containerd-namespace": namespace, "containerd-plugins-namespace": f"{namespace}-plugins",
    }))  # fmt: skip
    docker = ["docker", "-H", f"unix://{socket}"]

    def forget_docker() -> None:
        for line in run(docker + ["ps", "-aq"], check=False).stdout.split():
            run(docker + ["rm", "-f", line], check=False)

    def forget_exec_root() -> None:
        bench.unmount_all(exec_root)
        shutil.rmtree(exec_root, ignore_errors=True)
        remove_cgroup_parent("docker")
        for leftover in (Path("/run/docker/plugins"), Path("/run/docker")):
            try:
                leftover.rmdir()
            except OSError:
                pass

    bench.on_cleanup("remove dockerd's exec root", forget_exec_root)
    start_daemon(bench, "dockerd", ["dockerd", "--config-file", str(config)], docker + ["info"], folder / "dockerd.log")
    bench.on_cleanup("remove dockerd's containers", forget_docker)
    run(docker + ["import", str(layer), "feather-bench-busybox:1"])
    commands = [
        ("docker run --rm, runc", docker + ["run", "--rm", "--runtime", "runc", "feather-bench-busybox:1", "/bin/true"]),
        ("docker run --rm, feather-oci", docker + ["run", "--rm", "--runtime", "feather", "feather-bench-busybox:1", "/bin/true"]),
    ]  # fmt: skip
    for _, argv in commands:
        problem = try_once(argv, timeout=120)
        if problem:
            raise RuntimeError(f"{code(argv)}: {problem}")
    return commands, bench.hyperfine(commands)


def oci_lifecycle(bench: Bench, folder: Path, feather_oci: str) -> tuple[list, dict[str, Stats]]:
    runc = shutil.which("runc") or "runc"
    bundle = oci_runtime_bundle(folder, runc)
    roots = {"runc": folder / "runc-root", "feather-oci": folder / "feather-oci-root"}

    def forget_containers() -> None:
        for runtime, root in ((runc, roots["runc"]), (feather_oci, roots["feather-oci"])):
            run([runtime, "--root", str(root), "delete", "--force", "bench-lifecycle"], check=False)
        remove_cgroup_parent("bench-lifecycle")

    bench.on_cleanup("delete the lifecycle containers", forget_containers)
    commands = [
        ("runc create + start + delete", lifecycle_command(runc, roots["runc"], bundle, "bench-lifecycle")),
        ("feather-oci create + start + delete", lifecycle_command(feather_oci, roots["feather-oci"], bundle, "bench-lifecycle")),
    ]  # fmt: skip
    for _, argv in commands:
        problem = try_once(argv)
        if problem:
            raise RuntimeError(f"{code(argv)}: {problem}")
    return commands, bench.hyperfine(commands)


def compare_oci_runtime(bench: Bench) -> None:
    # As build() made it (scripts/build-release: a static-pie); a plain `cargo build` here
    # would relink it dynamic and measure another feather-oci than the installed one.
    feather_oci = str(TARGET_DIR / "release" / "feather-oci")
    folder = bench.work / "oci"
    folder.mkdir()
    image, layer = oci_image_tar(folder, OCI_IMAGE)
    parts = [
        "feather-oci (docs/oci.md) in the engines' own paths, against runc (Debian's, the "
        "reference runtime) in the same engine started by this run: containerd 1.6 "
        "(`ctr run --rm --runc-binary`, its own root, state, socket; CRI plugin off), dockerd "
        "(its own data-root and exec-root, no bridge or iptables, a `runtimes` entry `feather`), "
        "and the runtime's own command line. The image is a busybox-static root the run builds "
        "(imported, no registry). The two commands of each pair take turns "
        f"(hyperfine, {bench.plan.runs} runs each in {bench.plan.rounds} round(s))."
    ]
    rows, failures = [], []
    pairs = [
        ("ctr", lambda: oci_ctr(bench, folder, feather_oci, image), CTR_TARGET, "`ctr run --rm … true`"),
        ("docker", lambda: oci_docker(bench, folder, feather_oci, layer), DOCKER_TARGET, "`docker run --rm … true`"),
        ("runtime", lambda: oci_lifecycle(bench, folder, feather_oci), RUNTIME_TARGET_OCI, "the runtime's `create` + `start` + `delete` of a busybox `true` bundle"),
    ]  # fmt: skip
    for kind, measure, target, what in pairs:
        try:
            commands, stats = measure()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            failures.append(f"- **{kind}**: {e}")
            bench.report.target(f"oci runtime: {what}", f"feather-oci median ≤ {target}× runc's", "could not run here (section 8)", None)
            continue
        (runc_label, _), (feather_label, _) = commands
        runc_s, feather_s = stats[runc_label], stats[feather_label]
        ratio = feather_s.median / runc_s.median
        for label, argv in commands:
            rows.append([label, code(argv).replace(feather_oci, "feather-oci"), *stat_cells(stats[label]), times(stats[label].median / runc_s.median)])
        bench.report.target(
            f"oci runtime: {what}",
            f"feather-oci median ≤ {target}× runc's",
            f"{secs(feather_s.median)} vs {secs(runc_s.median)}: {times(ratio)}",
            ratio <= target,
        )
    parts.append(table(["what", "command", "min", "median", "max", "× runc"], rows))
    if failures:
        parts.append("Could not run here (exact error):\n\n" + "\n".join(failures))
    parts.append(
        "In the create + start + delete rows each call is a separate process, as an engine makes "
        "them; `delete --force` ends the container if `true` has not exited yet. runc re-executes "
        "itself as `runc init` (a Go runtime start each time) and waits on it through a FIFO; "
        "feather-oci does its work in one clone of its own binary. In the engine rows the "
        "engine's own work (containerd's snapshot, shim start, task events; dockerd's container "
        "set-up through containerd) is the same for both and dominates."
    )
    bench.report.add("8. OCI runtime: feather-oci against runc", *parts)


# Migration (issue 16): a VM holding 256 MiB and writing, moved between two state roots of this
# machine (a `feather serve` on 127.0.0.1), in each mode. Its frozen time is measured inside it:
# the longest gap between the ticks it takes every 5 ms, on the wall clock (CRIU restores the
# VM's time namespace so that its monotonic clock skips the pause).
# The same program as the migration tests' (tests/support/mod.rs, MEMORY_WRITER).
MEMORY_WRITER = (REPO / "tests" / "support" / "memory-writer.py").read_text()
FREEZE_TARGET = 0.3  # seconds a post-copy migration may freeze a 256 MiB writer


class TwoHosts:
    """Two network namespaces joined by a veth pair (10.76.0.1 and 10.76.0.2): `migrate` runs
    in the first, `serve` in the second as another machine would (a mount namespace of its own
    with a private /run/feather-net, where roots claim subnets machine-wide), so that a VM with a
    private network keeps its address and subnet there. Removed with `close`."""

    made = 0

    def __init__(self) -> None:
        TwoHosts.made += 1
        tag = f"{os.getpid() % 10_000}{TwoHosts.made}"
        self.a, self.b = f"fbench-a-{tag}", f"fbench-b-{tag}"
        va, vb = f"fba{tag}", f"fbb{tag}"
        for args in (
            ["netns", "add", self.a], ["netns", "add", self.b],
            ["link", "add", va, "type", "veth", "peer", "name", vb],
            ["link", "set", va, "netns", self.a], ["link", "set", vb, "netns", self.b],
            ["-n", self.a, "addr", "add", "10.76.0.1/30", "dev", va],
            ["-n", self.b, "addr", "add", "10.76.0.2/30", "dev", vb],
            ["-n", self.a, "link", "set", va, "up"], ["-n", self.b, "link", "set", vb, "up"],
            ["-n", self.a, "link", "set", "lo", "up"], ["-n", self.b, "link", "set", "lo", "up"],
        ):  # fmt: skip
            run(["ip", *args])

    def in_a(self, command: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.a}", *command]

    def apart_in_b(self, command: list[str]) -> list[str]:
        script = 'mkdir -p /run/feather-net && mount -t tmpfs feather-bench /run/feather-net && exec nsenter --net="$0" "$@"'
        return ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", script, f"/run/netns/{self.b}", *command]

    def close(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def subnet_of(info: dict) -> str:
    """The /24 (or other prefix) a VM's private address belongs to, e.g. 10.78.3.0/24."""
    network = info["network"]
    return str(ipaddress.ip_network(f"{network['address']}/{network['prefix']}", strict=False))


def migrate_writer(bench: Bench, mode: str, net: str = "none") -> dict:
    """`net`: "none", or "private" (the default VM: the receiver must hold its subnet, so it runs
    apart, see TwoHosts)."""
    source = bench.feather
    target = Feather(source.binary, bench.work / f"migrate-{mode}-{net}")
    env = {**os.environ, "FEATHER_MIGRATE_TOKEN": "bench-migration"}
    hosts = TwoHosts() if net == "private" else None
    serve = None
    try:
        info = source.up("mover", *(["--net", "none"] if net == "none" else []))
        if hosts is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            to = f"127.0.0.1:{port}"
            serve = subprocess.Popen(target.cmd("serve", "--listen", to, "--once"), env=env, stderr=subprocess.DEVNULL)
            migrate = source.cmd
        else:
            to = "10.76.0.2:7070"
            serve_env = {**env, "FEATHER_SUBNET": subnet_of(info)}
            serve = subprocess.Popen(hosts.apart_in_b(target.cmd("serve", "--listen", to, "--once")), env=serve_env, stderr=subprocess.PIPE, text=True)
            said = ""
            while f"listening on {to}" not in said:  # before it listens, it may clean up
                line = serve.stderr.readline()
                if not line:
                    raise RuntimeError(f"feather serve ended: {said.strip()}")
                said += line
            migrate = lambda *args: hosts.in_a(source.cmd(*args))  # noqa: E731
        source("exec", "mover", "--", "sh", "-c", '/usr/bin/python3 -c "$0" </dev/null >/dev/null 2>&1 &', MEMORY_WRITER)
        deadline = time.monotonic() + 60
        while source.exec("mover", "cat", "/run/sum-before", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the writer never filled its memory")
            time.sleep(0.1)
        time.sleep(1)  # a steady write load before the move
        moved = run(migrate("migrate", "mover", "--to", to, "--mode", mode, "--json"), env=env, timeout=600)
        phases = json.loads(moved.stdout)
        phases["inside_ms"] = int(target.exec("mover", "cat", "/run/longest-gap").stdout.strip())
        return phases
    finally:
        if serve is not None:
            kill_and_reap(serve)
        source.remove("mover")
        target.remove_all()
        if hosts is not None:
            hosts.close()


def compare_migration(bench: Bench) -> None:
    runs = {
        (mode, net): migrate_writer(bench, mode, net)
        for mode, net in (("post-copy", "private"), ("post-copy", "none"), ("stop-and-copy", "private"))
    }  # fmt: skip
    rows = []
    for (mode, net), p in runs.items():
        all_pages = p.get("all_pages_ms")
        network = "default (private)" if net == "private" else "--net none"
        rows.append([
            mode, network, f"{p['inside_ms']} ms", f"{p['frozen_ms']} ms",
            " / ".join(str(p["phases_ms"][k]) for k in ("dump", "transfer_and_restore", "release")),
            f"{all_pages} ms" if all_pages is not None else "with the freeze",
            mib(p["bytes"]), str(p["pages_before_resume"]), str(p["pages_after_resume"]),
            p.get("network_namespace", "?"),
        ])  # fmt: skip
    post = runs[("post-copy", "private")]["inside_ms"] / 1000
    post_none = runs[("post-copy", "none")]["inside_ms"] / 1000
    bench.report.add(
        "9. Migration of a 256 MiB writer",
        "A VM over the host's / whose python process holds 256 MiB and rewrites a byte of "
        "another page every 5 ms, moved with `feather migrate --mode MODE --json` to a `feather "
        "serve` of a second state root: the default VM (a private network) between two network "
        "namespaces of this machine joined by a veth pair, the receiver apart as another machine "
        "(its own /run/feather-net, the same subnet); a `--net none` VM to 127.0.0.1. Frozen "
        "inside: the longest gap between two of its ticks, read in the VM at the receiver; by "
        "migrate's count: from the start of the dump to the receiver's word that it runs, split "
        "into dump / transfer and restore / release; every page: post-copy, until the last page "
        "arrived; network namespace: made anew by the receiving keeper, or dumped by CRIU "
        "(docs/migration.md).",
        table(["mode", "network", "frozen inside", "frozen (migrate)", "phases (ms)", "every page", "archive", "pages in archive", "pages after", "network namespace"], rows),
    )
    bench.report.target(
        "the default VM's (256 MiB writer) freeze in a post-copy migration", f"< {secs(FREEZE_TARGET)}", secs(post), post < FREEZE_TARGET
    )
    # The row's name from before the default VM was measured: a `--net none` VM's.
    bench.report.target(
        "a 256 MiB writer's freeze in a post-copy migration", f"< {secs(FREEZE_TARGET)}", secs(post_none), post_none < FREEZE_TARGET
    )


# Checkpoint and restore (issue 16): `feather checkpoint` / `feather restore` of a VM holding
# 64 MB against the `criu` command line on the same process tree with the same options, by
# bench/checkpoint.sh (its header says what each side includes); its medians are parsed.
CHECKPOINT_TARGET = 1.1  # feather's median at most this times criu's


def compare_checkpoint(bench: Bench) -> None:
    rounds = 3 if bench.plan.quick else 7
    env = {**os.environ, "FEATHER": str(bench.feather.binary)}
    result = run(["bash", str(REPO / "bench" / "checkpoint.sh"), str(rounds), "64", "0"], env=env, timeout=900)
    medians = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] in ("checkpoint", "restore"):
            medians[words[0]] = (int(words[1]), int(words[2]))
    if set(medians) != {"checkpoint", "restore"}:
        raise RuntimeError(f"bench/checkpoint.sh printed no medians: {why(result)}")
    rows = []
    for action, (feather_ms, criu_ms) in medians.items():
        ratio = feather_ms / criu_ms
        rows.append([action, f"{feather_ms} ms", f"{criu_ms} ms", times(ratio)])
        bench.report.target(
            f"`feather {action}` of a VM holding 64 MB",
            f"median ≤ {CHECKPOINT_TARGET}× the `criu` command line's",
            f"{feather_ms} ms vs {criu_ms} ms: {times(ratio)}",
            ratio <= CHECKPOINT_TARGET,
        )
    bench.report.add(
        "9b. Checkpoint and restore against the criu command line",
        f"`bench/checkpoint.sh {rounds} 64 0`: a VM over a busybox scratch base holding 64 MB in "
        "an awk string, checkpointed and restored by feather (CLI, keeper, state records, the "
        "restoring keeper's mount namespace and cgroup), then the same tree by `criu dump` and "
        "`criu restore` with the same options from a shell that has mounted the VM's root; "
        f"median of {rounds} rounds each. Both read CRIU's cache of kernel probes "
        "(`/run/criu.kdat`, docs/migration.md).",
        table(["action", "feather", "criu", "× criu"], rows),
    )


COMPARISONS: list[tuple[str, Callable[[Bench], None]]] = [
    ("start", compare_start),
    ("exec", compare_exec),
    ("memory of one idle VM", compare_idle_memory),
    ("density of idle VMs", compare_idle_density),
    ("density of nginx VMs", compare_nginx_density),
    ("hardware-VM reference", hardware_vm_reference),
    ("service manager memory", compare_service_manager),
    ("nginx throughput", compare_nginx_throughput),
    ("file-heavy job", compare_file_job),
    ("copy-up", compare_copy_up),
    ("diff and commit", compare_commit),
    ("network namespace", compare_network_namespace),
    ("shuttle", compare_shuttle),
    ("web view", compare_web),
    ("oci runtime", compare_oci_runtime),
    ("migration", compare_migration),
    ("checkpoint", compare_checkpoint),
]


def render(bench: Bench, machine_text: str, problems: list[str], failed: list[str]) -> str:
    header = (
        "# Benchmarks\n\n"
        "Generated by `bench/run" + (" --quick" if bench.plan.quick else "") + "` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; do not edit by hand. "
        "See bench/README.md for what each comparison means. Every figure below was measured in "
        "this one run on this one machine, except the Firecracker figures (published, marked so). "
        "Times are wall-clock; min / median / max over the runs stated."
    )
    summary = table(["what", "target (from the issues)", "measured", "verdict"], bench.report.targets)
    cleanup = (
        "Clean-up: everything the run made (VMs, mounts, processes, cgroups, files) was removed."
        if not problems
        else "Clean-up problems:\n\n" + "\n".join(f"- {p}" for p in problems)
    )
    parts = [header, "## Targets\n\n" + summary, "## Machine\n\n" + machine_text, *bench.report.sections]
    if failed:
        parts.append("## Comparisons that failed\n\n" + "\n".join(f"- {f}" for f in failed))
    parts.append(cleanup)
    return "\n\n".join(parts) + "\n"


PARTIAL_NOTE = "Re-measured by `bench/run --only"


def section_key(section: str) -> str:
    """A section's number ("3a."), or its whole title when it has none."""
    title = section.split("\n", 1)[0].removeprefix("## ")
    first = title.split(" ", 1)[0]
    return first if re.fullmatch(r"\d+[a-z]?\.", first) else title


def noted_sections(note: str) -> list[str]:
    """The sections a partial run's note says it measured ("sections 9, 9b and their rows")."""
    found = re.search(r"\): sections (.*?) and their rows", note)
    return [x.strip() for x in found.group(1).split(",")] if found else []


def merge(previous: str, bench: Bench, only: list[str], problems: list[str], failed: list[str]) -> str:
    """The previous full report with the sections and target rows of an `--only` run put in
    place of theirs (a full run takes minutes; this keeps the rest of the report as measured)."""
    body, _, _ = previous.rpartition("\n\nClean-up")
    header, *sections = (body or previous).split("\n\n## ")
    sections = ["## " + x for x in sections]
    header, *notes = header.split("\n\n" + PARTIAL_NOTE)
    fresh = {section_key(x): x for x in bench.report.sections}
    # Earlier partial runs stay noted, but for sections this run measured again.
    notes = [PARTIAL_NOTE + n for n in notes if not set(noted_sections(n)) <= {k.rstrip(".") for k in fresh}]
    kept = [x for x in sections if section_key(x) not in ("Targets", "Comparisons that failed")]
    merged = [fresh.get(section_key(x), x) for x in kept]
    for key, new in fresh.items():
        if key in map(section_key, kept):
            continue
        # A section the previous report lacks goes before the first numbered one after it.
        later = [i for i, x in enumerate(merged) if section_key(x)[0].isdigit() and section_key(x) > key]
        merged.insert(later[0] if later else len(merged), new)
    # The targets table: rows re-measured replace theirs (by what they measure); new ones follow
    # the last row of the same kind ("memory:", "start:", …).
    targets = next((x for x in sections if x.startswith("## Targets")), "")
    rows = [line for line in targets.splitlines() if line.startswith("| ") and not line.startswith("| what |")]
    for what, target, measured, outcome in bench.report.targets:
        line = table(["what", "target", "measured", "verdict"], [[what, target, measured, outcome]]).splitlines()[-1]
        same = [i for i, row in enumerate(rows) if row.startswith(f"| {what} |")]
        kind = [i for i, row in enumerate(rows) if row.startswith("| " + what.split(":")[0] + ":")]
        if same:
            rows[same[0]] = line
        else:
            rows.insert(kind[-1] + 1 if kind else len(rows), line)
    summary = "\n".join(["| what | target (from the issues) | measured | verdict |", "|---|---|---|---|", *rows])
    commit = run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=False).stdout.strip()
    note = (
        f"{PARTIAL_NOTE} " + " --only ".join(shlex.quote(x) for x in only) + "` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (commit {commit}, load average "
        f"at the end {load_average()}): sections " + ", ".join(k.rstrip(".") for k in sorted(fresh)) + " and their rows "
        "in Targets. Everything else, the Machine table included, is from the run above."
    )
    parts = [header, *notes, note, "## Targets\n\n" + summary, *merged]
    if failed:
        parts.append("## Comparisons that failed\n\n" + "\n".join(f"- {f}" for f in failed))
    parts.append(
        "Clean-up: everything the run made (VMs, mounts, processes, cgroups, files) was removed."
        if not problems
        else "Clean-up problems:\n\n" + "\n".join(f"- {p}" for p in problems)
    )
    return "\n\n".join(parts) + "\n"


def interrupt(signum, frame) -> None:
    """A termination signal unwinds through the clean-up like Ctrl-C."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, no nginx density (≤ 2 min)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this comparison (repeatable); its sections replace theirs in the existing report")
    args = parser.parse_args()
    unknown = [name for name in args.only or [] if name not in dict(COMPARISONS)]
    if unknown:
        parser.error(f"no comparison named {', '.join(map(repr, unknown))}; the comparisons: " + ", ".join(repr(n) for n, _ in COMPARISONS))
    started = time.monotonic()
    load_before = load_average()
    bench = Bench(Plan.of(args.quick))
    signal.signal(signal.SIGTERM, interrupt)
    failed: list[str] = []
    interrupted = False
    try:
        install_peers(bench)
        build(bench)
        for name, comparison in COMPARISONS:
            if args.only and name not in args.only:
                continue
            settled = settle(name)
            # The wait is not the section's: its budget of rounds (Plan.budget) starts after it.
            bench.started += settled.waited
            log(f"{name} …")
            first_new = len(bench.report.sections)
            try:
                comparison(bench)
            except Exception as e:  # noqa: BLE001 - one broken comparison must not cost the others
                traceback.print_exc()
                failed.append(f"{name}: {e}")
            # The host's state as the section's timing began, in each section it added.
            for i in range(first_new, len(bench.report.sections)):
                bench.report.sections[i] += "\n\n" + settled.note()
            # Whatever a comparison left running is stopped before the next one is timed.
            bench.feather.remove_all()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        problems = bench.clean_up()
    if interrupted:
        log("interrupted; cleaned up, report not written")
        return 130
    if args.only and REPORT.exists():
        text = merge(REPORT.read_text(), bench, args.only, problems, failed)
    else:
        text = render(bench, machine(bench, started, load_before), problems, failed)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(text)
    log(f"wrote {REPORT.relative_to(REPO)} in {secs(time.monotonic() - started)}")
    for problem in problems:
        log(f"clean-up problem: {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
