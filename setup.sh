#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for feather and builds it. Run as root; safe to run again.
#
#   sudo ./setup.sh              # install and build
#   sudo ./setup.sh --uninstall  # remove what it installed outside the checkout
#
# Installs only Debian packages (the system ones feather and its tests use) and builds the
# workspace with cargo. Benchmarks install their peers themselves (bench/run).
set -euo pipefail
cd "$(dirname "$0")"

if [[ ${1:-} == --uninstall ]]; then
    # The Debian packages stay: other software may use them, and apt removes them on request.
    scripts/install-feather --uninstall
    scripts/install-criu --uninstall
    exit 0
fi

packages=(
    busybox-static   # a self-contained shell for VMs over scratch base trees in tests
    iproute2         # `ip`, used by tests to look for leftover links
    iputils-ping     # a program with file capabilities: tests that VM hardening keeps it working
    procps           # `ps` inside VMs in tests
    util-linux       # nsenter, setpriv, ipcmk/ipcrm: tests enter test hosts, drop root, make SysV IPC
    dbus             # service tests duplicate the D-Bus system bus into VMs
    polkitd          # polkit.service is Type=dbus: tests wait for org.freedesktop.PolicyKit1 on a VM's bus
    attr             # setfattr/getfattr: tests check that commit keeps extended attributes
    libcap2-bin      # setcap/getcap: a test VM gives a file capabilities that commit must not apply unasked
    nftables         # `nft`: feather's network policy for --net private VMs (crates/feather-net)
    nginx            # network tests serve pages from VMs and the host; service tests duplicate its unit
    curl             # network and service tests fetch those pages
    openssl          # tests make certificate authorities (the web view beyond loopback, migration over mutual TLS)
    gcc libc6-dev    # scripts/install-criu compiles the small shim it preloads into criu (TCP sockets on Linux >= 6.16, other users' limits without CAP_SYS_RESOURCE)
                     # gcc's libgcc_eh.a: the `feather` front links the unwinder in (crates/feather/src/main.rs); readelf (binutils, with gcc): a test reads its libraries, install-feather checks the release pair is static
                     # libc6-dev's libc.a: scripts/build-release links `feather`, `feather-keeper` and `feather-oci` statically
    tar zstd         # checkpoint --export / restore --import: VM archives (.tar.zst)
    iptables         # CRIU saves and restores a VM's firewall rules with iptables-save/-restore
    python3          # checkpoint tests: a unix-socket server and client inside a VM over /
    redis-server redis-tools  # checkpoint tests (redis holding hundreds of MB); service tests (Type=notify)
    # Service tests duplicate these from the host's own units into VMs (never started on the host):
    postgresql       # postgresql@15-main (template, pg_ctlcluster, Type=forking + PIDFile); psql
    mariadb-server mariadb-client  # Type=notify, /run/mysqld from tmpfiles.d; the mariadb client
    rsyslog          # a VM's own syslog daemon: logger lands in the VM's /var/log/syslog
    cron             # an @reboot job runs inside the VM
    postfix          # postfix.service pulls postfix@-.service through its generator (postfix-instance-generator); SMTP on the VM's port 25
    memcached        # answers set/get/stats on the VM's loopback
    apache2          # Type=forking through apachectl; also with mariadb as one group
    openssh-server   # sshd's banner on the VM's port 22
    inetutils-inetd inetutils-telnetd tcpd  # telnetd through inetd (its inetd.conf line runs tcpd)
    # The measured catalogue (tests/functional/services_catalogue.rs, docs/services.md): Debian
    # server packages, each duplicated into a VM and asked by its own client (never started on
    # the host). Mail, DNS, file transfer:
    dovecot-imapd spamd spamc bind9 bind9-dnsutils unbound dnsmasq nsd knot
    pdns-server pdns-backend-bind pdns-recursor vsftpd tftpd-hpa samba smbclient rpcbind
    # HTTP servers and proxies, PHP-FPM (cgi-fcgi asks it):
    lighttpd haproxy squid varnish tinyproxy privoxy apt-cacher-ng php8.2-fpm libfcgi-bin
    # Brokers, directory, printing, key-value, monitoring, and their clients:
    rabbitmq-server mosquitto mosquitto-clients beanstalkd prosody slapd ldap-utils cups
    cups-client etcd-server etcd-client snmpd snmp prometheus-node-exporter munin-node
    # Ones the catalogue says no to (the host's kernel NFS server; a tun device):
    nfs-kernel-server openvpn
    xdg-dbus-proxy   # Shuttle's D-Bus channels: the filtering proxy between a VM and another's bus
    python3-dbus python3-gi  # Shuttle tests: a program owning names on a VM's system bus
    socat            # Shuttle tests: a unix-socket client inside a VM
    xfsprogs         # tests: a layer over XFS (its statfs id only its device number, its UUID tells it)
    e2fsprogs        # --disk without project quotas: mkfs.ext4 formats a VM's disk image; tests: chattr tries to change a project
    mount            # --disk without project quotas: mount -o loop attaches a VM's disk image
    # Engines that drive feather-oci in tests/oci (each test starts its own daemon; none is
    # started on the host). runc is the reference runtime the engines' calls were learnt from.
    containerd runc  # containerd 1.6 and ctr: `ctr run --runc-binary feather-oci`; its CRI plugin (docs/kubernetes.md)
    podman           # podman 4.3 --runtime feather-oci (with conmon)
    docker.io        # dockerd with a runtimes entry for feather-oci (docs/oci.md)
    uidmap fuse-overlayfs slirp4netns  # what podman's package expects beside it; fuse-overlayfs also: a FUSE mount whose daemon a test stops (roots::tests)
    # opencontainers' own conformance suite (runtime-tools' validation programs, built from
    # source in GOPATH mode by scripts/oci-conformance; tests/oci/conformance.rs runs it).
    golang-go golang-github-opencontainers-runtime-tools-dev golang-github-google-uuid-dev
    bsdutils         # `script`: a pseudo-terminal for `ctr run -t` in tests
    protobuf-compiler  # protoc: the k8s-cri crate compiles CRI's .proto files (tests/oci/cri.rs)
    chromium chromium-driver python3-selenium  # tests/web drive `feather web` in a real browser
    sudo             # the README's examples are written as `sudo feather …`
    jq make          # and use these (tests/functional/conventions.rs runs them as written)
    man-db           # `man feather`, `man feather-create`: the pages scripts/install-feather installs
    bash-completion  # loads the completion script scripts/install-feather installs
)

export DEBIAN_FRONTEND=noninteractive
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    # Debian's maintainer scripts start the services they install (through invoke-rc.d).
    # feather runs private copies of them inside VMs; the host itself must not run them. For
    # the length of the install, a policy-rc.d that denies every start (exit 101) is put in
    # place, unless the machine already has one (containers often do); ours is removed after.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# Put here by feather setup.sh for the length of one install.\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# CRIU >= 4.1 (Debian 13's, with its own glibc, in /opt/feather/criu; the system's packages and
# apt sources are not changed): checkpoint and restore of VMs. Quick when already installed.
scripts/install-criu

cargo build --workspace --all-targets
# The release binaries, feather-oci (the OCI runtime engines call, docs/oci.md) among them;
# the front and the keeper linked statically (the script says why and how).
scripts/build-release
# `feather-open` and the `xdg-open` hook are the feather binary by other names (docs/shuttle.md).
ln -sfn feather target/release/feather-open
mkdir -p target/release/hook && ln -sfn ../feather target/release/hook/xdg-open
# Where a shell finds them: the binaries, `feather-open`, the hook, manual pages and completions
# into /usr/local (the list of what went where is kept for --uninstall).
scripts/install-feather
