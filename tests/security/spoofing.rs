//! A VM's frames carry its own addresses. Its root holds `CAP_NET_RAW` (ping, raw sockets in its
//! own network namespace), so it can put any source address and any ARP claim on its port of
//! the bridge; the host's rules that decide by source address — `--egress` is a set of VM
//! addresses — and the host's ARP table must not take another VM's address from it.
//!
//! Harmless markers: a datagram with a marker text to a namespace the test makes, standing for
//! the world beyond the host; an ARP claim whose only effect would be on the host's neighbour
//! entry for the other VM (read, never used).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{Feather, TestSubnet};

/// A network namespace joined to the host by a veth pair: "outside" for a VM with `--egress`
/// (the host routes to it). Removed on drop.
struct Outside {
    namespace: String,
    host_end: String,
    address: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

impl Outside {
    fn new(subnet: &TestSubnet) -> Outside {
        let tag = std::process::id();
        let prefix = subnet.cidr.trim_end_matches(".0/24");
        let outside = Outside {
            namespace: format!("fspoof-{tag}"),
            host_end: format!("fspo{tag}"),
            address: format!("{prefix}.2"),
        };
        let inner = format!("fspi{tag}");
        // Names this process's pid: what holds them already is a killed test's of the same
        // pid (pids wrap at the host's pid_max), never a live one's.
        outside.remove();
        ip(&["netns", "add", &outside.namespace]);
        ip(&[
            "link",
            "add",
            &outside.host_end,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            &outside.namespace,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{prefix}.1/24"),
            "dev",
            &outside.host_end,
        ]);
        ip(&["link", "set", &outside.host_end, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", outside.namespace.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/24", outside.address),
            "dev",
            &inner,
        ]);
        inside(&["link", "set", &inner, "up"]);
        inside(&["link", "set", "lo", "up"]);
        // Its answers go back through the host (they never come here: datagrams only).
        inside(&["route", "add", "default", "via", &format!("{prefix}.1")]);
        outside
    }

    /// A UDP listener in the namespace that prints each datagram for `seconds`, then ends.
    fn listen(&self, port: u16, seconds: u32) -> Child {
        let script = format!(
            "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0', {port}))\n\
             print('ready', flush=True)\n\
             end = time.time() + {seconds}\n\
             while time.time() < end:\n\
             \x20   s.settimeout(max(0.01, end - time.time()))\n\
             \x20   try:\n\
             \x20       data, peer = s.recvfrom(100)\n\
             \x20   except socket.timeout:\n\
             \x20       break\n\
             \x20   print(data.decode(), peer[0], flush=True)\n"
        );
        Command::new("ip")
            .args(["netns", "exec", &self.namespace, "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Outside {
    /// Deletes its host end (and so the veth pair) and its namespace, where they are.
    fn remove(&self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).output();
        };
        quiet(&["link", "del", &self.host_end]);
        quiet(&["netns", "del", &self.namespace]);
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Waits for the listener's first line.
fn await_ready(listener: &mut Child) -> std::io::BufReader<std::process::ChildStdout> {
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(listener.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    out
}

/// Python in a VM sending `marker` ten times as a UDP datagram from `source` (raw, header
/// written by hand) to `to:port`.
fn spoofed_datagrams(source: &str, to: &str, port: u16, marker: &str) -> String {
    format!(
        "import socket, struct, time\n\
         src, dst = socket.inet_aton('{source}'), socket.inet_aton('{to}')\n\
         body = b'{marker}'\n\
         udp = struct.pack('!HHHH', 40000, {port}, 8 + len(body), 0) + body\n\
         def checksum(b):\n\
         \x20   b += b'\\0' * (len(b) % 2)\n\
         \x20   s = sum(struct.unpack('!%dH' % (len(b) // 2), b))\n\
         \x20   while s >> 16: s = (s & 0xffff) + (s >> 16)\n\
         \x20   return ~s & 0xffff\n\
         hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)\n\
         hdr = hdr[:10] + struct.pack('!H', checksum(hdr)) + hdr[12:]\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
         for _ in range(10):\n\
         \x20   s.sendto(hdr + udp, ('{to}', 0))\n\
         \x20   time.sleep(0.05)\n\
         print('sent')\n"
    )
}

fn address(feather: &Feather, vm: &str) -> String {
    feather.inspect(vm)["network"]["address"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_vm_without_egress_cannot_leave_the_host_with_another_vms_address() {
    let subnet = TestSubnet::of("10.87");
    let outside = Outside::new(&subnet);
    let feather = Feather::new("spoof-egress");
    feather.ok(&["create", "open", "--egress"]);
    feather.ok(&["create", "closed"]);
    feather.ok(&["start", "open"]);
    feather.ok(&["start", "closed"]);
    let open = address(&feather, "open");
    let port = 47_000 + (std::process::id() % 1000) as u16;

    let mut listener = outside.listen(port, 4);
    let _out = await_ready(&mut listener);
    // The VM with --egress reaches the outside: the path works.
    let to = &outside.address;
    feather.ok(&[
        "exec", "open", "--", "python3", "-c",
        &format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'EGRESS-OPEN', ('{to}', {port}))"),
    ]);
    // The VM without it, with the other's address as its source.
    let sent = feather.ok(&[
        "exec",
        "closed",
        "--",
        "python3",
        "-c",
        &spoofed_datagrams(&open, to, port, "SPOOFED-BY-CLOSED"),
    ]);
    assert_eq!(sent.trim(), "sent");
    // And with its own (dropped: no --egress).
    let _ = feather.run(&[
        "exec", "closed", "--", "python3", "-c",
        &format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'PLAIN-CLOSED', ('{to}', {port}))"),
    ]);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut _out.into_inner(), &mut rest).unwrap();
    let _ = listener.wait();
    assert!(rest.contains("EGRESS-OPEN"), "{rest}");
    assert!(!rest.contains("PLAIN-CLOSED"), "{rest}");
    assert!(
        !rest.contains("SPOOFED-BY-CLOSED"),
        "a VM without --egress reached the outside with another VM's address: {rest}"
    );
}

/// Python in a VM sending ARP replies that claim `claimed` is at this VM's MAC, to the host
/// (the gateway `gateway`), on the VM's eth0.
fn arp_claims(claimed: &str, gateway: &str) -> String {
    format!(
        "import socket, struct, time\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('eth0', 0))\n\
         mine = s.getsockname()[4]\n\
         arp = struct.pack('!HHBBH6s4s6s4s', 1, 0x0800, 6, 4, 2, mine, socket.inet_aton('{claimed}'), b'\\xff' * 6, socket.inet_aton('{gateway}'))\n\
         frame = b'\\xff' * 6 + mine + struct.pack('!H', 0x0806) + arp\n\
         for _ in range(10):\n\
         \x20   s.send(frame)\n\
         \x20   time.sleep(0.05)\n\
         print(mine.hex(':'))\n"
    )
}

/// The host's neighbour entry for `address`: its link-layer address, if it has one.
fn neighbour(address: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["neigh", "show", address])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fields: Vec<&str> = text.split_whitespace().collect();
    fields
        .iter()
        .position(|f| *f == "lladdr")
        .map(|i| fields[i + 1].to_owned())
}

#[test]
fn a_vm_cannot_claim_another_vms_address_in_the_hosts_arp_table() {
    let feather = Feather::new("spoof-arp");
    feather.ok(&["create", "victim"]);
    feather.ok(&["create", "claimer"]);
    feather.ok(&["start", "victim"]);
    feather.ok(&["start", "claimer"]);
    let victim = address(&feather, "victim");
    let gateway = feather.inspect("victim")["network"]["gateway"]
        .as_str()
        .unwrap()
        .to_owned();
    // The host learns the victim's address from the victim itself.
    let pinged = Command::new("ping")
        .args(["-c", "1", "-W", "2", &victim])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(pinged.success());
    let before = neighbour(&victim).expect("the host has a neighbour entry for the VM");
    // Past the neighbour table's lock time (1 s), when a claim would replace the entry.
    std::thread::sleep(Duration::from_millis(1200));
    let claimer_mac = feather.ok(&[
        "exec",
        "claimer",
        "--",
        "python3",
        "-c",
        &arp_claims(&victim, &gateway),
    ]);
    let claimer_mac = claimer_mac.trim();
    assert_ne!(before, claimer_mac);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        neighbour(&victim).as_deref(),
        Some(before.as_str()),
        "another VM ({claimer_mac}) took the victim's address in the host's ARP table"
    );
}

/// Python in a VM that, for three seconds, sends frames with `mac` as their source (IPv4 from
/// its own address, to the gateway, which refuses them) and watches its interface for a frame
/// holding `marker`; prints CAUGHT if one came.
fn steal_frames(mac: &str, gateway: &str, marker: &str) -> String {
    format!(
        "import socket, struct, time\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n\
         s.bind(('eth0', 0))\n\
         s.settimeout(0.02)\n\
         me = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         me.connect(('{gateway}', 9))\n\
         mine = socket.inet_aton(me.getsockname()[0])\n\
         victim = bytes.fromhex('{mac}'.replace(':', ''))\n\
         body = b'x'\n\
         udp = struct.pack('!HHHH', 40000, 9, 8 + len(body), 0) + body\n\
         hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, mine, socket.inet_aton('{gateway}'))\n\
         words = sum(struct.unpack('!10H', hdr))\n\
         words = (words & 0xffff) + (words >> 16)\n\
         hdr = hdr[:10] + struct.pack('!H', ~words & 0xffff) + hdr[12:]\n\
         frame = b'\\xff' * 6 + victim + struct.pack('!H', 0x0800) + hdr + udp\n\
         end = time.time() + 3\n\
         caught = False\n\
         while time.time() < end and not caught:\n\
         \x20   s.send(frame)\n\
         \x20   try:\n\
         \x20       caught = b'{marker}' in s.recv(65535)\n\
         \x20   except socket.timeout:\n\
         \x20       pass\n\
         print('CAUGHT' if caught else 'nothing')\n"
    )
}

#[test]
fn a_vm_cannot_take_the_hosts_frames_for_another_vm() {
    let feather = Feather::new("spoof-mac");
    feather.ok(&["create", "victim"]);
    feather.ok(&["create", "thief"]);
    feather.ok(&["start", "victim"]);
    feather.ok(&["start", "thief"]);
    let victim = address(&feather, "victim");
    let gateway = feather.inspect("victim")["network"]["gateway"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim_mac = feather.sh("victim", "cat /sys/class/net/eth0/address");
    let victim_mac = victim_mac.trim().to_owned();
    // The host sends datagrams with a marker to the victim all the while.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = std::sync::Arc::clone(&stop);
        let to = format!("{victim}:9");
        std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = socket.send_to(b"FOR-THE-VICTIM-ONLY", &to);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let seen = feather.ok(&[
        "exec",
        "thief",
        "--",
        "python3",
        "-c",
        &steal_frames(&victim_mac, &gateway, "FOR-THE-VICTIM-ONLY"),
    ]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    assert_eq!(
        seen.trim(),
        "nothing",
        "another VM received the host's frames for the victim ({victim_mac})"
    );
}

/// Python in a VM sending router advertisements to every node of its link (`ff02::1`): a
/// default router (itself, for 30 s) and the prefix `2001:db8:f00d::/64` to make addresses
/// from, the marker. (Until its link-local address has passed duplicate address detection,
/// about a second after the VM's start, the kernel has no source for them: it tries again.)
const ROUTER_ADVERTISEMENTS: &str = "import socket, struct, time\n\
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n\
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)\n\
index = socket.if_nametoindex('eth0')\n\
mine = bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':', ''))\n\
ra = struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, 30, 0, 0)\n\
ra += struct.pack('!BB6s', 1, 1, mine)\n\
prefix = socket.inet_pton(socket.AF_INET6, '2001:db8:f00d::')\n\
ra += struct.pack('!BBBBIII16s', 3, 4, 64, 0xc0, 30, 30, 0, prefix)\n\
sent, end = 0, time.time() + 10\n\
while sent < 10 and time.time() < end:\n\
\x20   try:\n\
\x20       s.sendto(ra, ('ff02::1', 0, 0, index))\n\
\x20       sent += 1\n\
\x20   except OSError:\n\
\x20       pass\n\
\x20   time.sleep(0.05)\n\
print('sent', sent)\n";

/// The host's IPv6 routes and addresses on `device`.
fn host_ipv6_on(device: &str) -> String {
    let list = |what: &str| {
        let out = Command::new("ip")
            .args(["-6", what, "show", "dev", device])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    list("route") + &list("addr")
}

/// Whether `listing` (routes and addresses) holds what the advertisements carry: the marker
/// prefix or a default route.
fn took_an_advertisement(listing: &str) -> bool {
    listing.contains("2001:db8:f00d") || listing.lines().any(|l| l.starts_with("default"))
}

#[test]
fn a_vms_router_advertisements_reach_neither_the_host_nor_another_vm() {
    let feather = Feather::new("spoof-ra");
    feather.ok(&["create", "router"]);
    feather.ok(&["create", "peer"]);
    feather.ok(&["start", "router"]);
    feather.ok(&["start", "peer"]);
    let bridge = feather.inspect("router")["network"]["bridge"]
        .as_str()
        .unwrap()
        .to_owned();
    // The host's side of the bridge takes router advertisements (the kernel's default).
    let accept_ra =
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{bridge}/accept_ra")).unwrap();
    assert_eq!(accept_ra.trim(), "1");
    let sent = feather.ok(&[
        "exec",
        "router",
        "--",
        "python3",
        "-c",
        ROUTER_ADVERTISEMENTS,
    ]);
    assert_eq!(sent.trim(), "sent 10");
    std::thread::sleep(Duration::from_millis(300));
    let host = host_ipv6_on(&bridge);
    assert!(
        !took_an_advertisement(&host),
        "the host took a VM's router advertisement on {bridge}: {host}"
    );
    let peer = feather.sh(
        "peer",
        "ip -6 route show dev eth0; ip -6 addr show dev eth0",
    );
    assert!(
        !took_an_advertisement(&peer),
        "another VM took the router advertisement: {peer}"
    );
}

/// Joins 300 IPv4 groups (239.77.N.M) and 300 IPv6 ones (ff0e::77:N) on eth0, 20 a socket
/// (the kernel's `igmp_max_memberships`), so that the VM's kernel sends its IGMP and MLD
/// membership reports; writes how many it joined to `/run/joined` and holds them a minute
/// (leaving would send leaves, which would empty a table that had learned them).
const MANY_JOINS: &str = "import socket, struct, time\n\
index = socket.if_nametoindex('eth0')\n\
held, joined = [], 0\n\
for n in range(15):\n\
\x20   four = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
\x20   six = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
\x20   for m in range(20):\n\
\x20       group = socket.inet_aton('239.77.%d.%d' % (n, m + 1))\n\
\x20       four.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + struct.pack('=4si', bytes(4), index))\n\
\x20       group = socket.inet_pton(socket.AF_INET6, 'ff0e::77:%d' % (n * 20 + m + 1))\n\
\x20       six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack('=I', index))\n\
\x20       joined += 1\n\
\x20   held += [four, six]\n\
open('/run/joined', 'w').write(str(joined))\n\
time.sleep(60)\n";

#[test]
fn a_vms_multicast_joins_leave_the_bridges_multicast_table_empty() {
    let feather = Feather::new("spoof-mdb");
    feather.ok(&["create", "joiner"]);
    feather.ok(&["start", "joiner"]);
    let bridge = feather.inspect("joiner")["network"]["bridge"]
        .as_str()
        .unwrap()
        .to_owned();
    let host_end = feather.inspect("joiner")["network"]["host_interface"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::support::python_daemon(&feather, "joiner", MANY_JOINS, &[]);
    feather.eventually("the VM joined its groups", || {
        feather
            .run(&["exec", "joiner", "--", "cat", "/run/joined"])
            .stdout
            == "300"
    });
    // The reports go out at once on a join (and again within a second, IGMPv3's and MLDv2's
    // unsolicited report interval): give them that second to reach the bridge.
    std::thread::sleep(Duration::from_millis(1500));
    let table = Command::new("bridge")
        .args(["mdb", "show", "dev", &bridge])
        .output()
        .unwrap();
    assert!(
        table.status.success(),
        "bridge mdb show dev {bridge}: {}",
        String::from_utf8_lossy(&table.stderr)
    );
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        !table.contains(&host_end),
        "the bridge {bridge} learned the VM's groups on its port {host_end}: {table}"
    );
    // The first wall on its own: the bridge does not snoop at all.
    let link = Command::new("ip")
        .args(["-d", "link", "show", "dev", &bridge])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("mcast_snooping 0"),
        "the bridge {bridge} snoops multicast: {link}"
    );
}
