//! Each VM's network identity: its own address on its state root's bridge, published ports,
//! the default policy (VM → host refused, VM → VM dropped), the three modes, and teardown that
//! leaves no link, bridge or nftables table behind. Every address used belongs to a bridge or
//! namespace these tests made; the "host" nginx listens on a port of its own per test.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{bridge_claim, Feather, HostTraces, ScratchBase, TestPort, TestSubnet};

fn host_links() -> String {
    let out = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft runs (./setup.sh)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fetches a URL from the host with a short timeout; None if it could not be fetched.
fn fetch(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "3", url])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn network(feather: &Feather, vm: &str) -> serde_json::Value {
    feather.inspect(vm)["network"].clone()
}

fn address(feather: &Feather, vm: &str) -> String {
    network(feather, vm)["address"]
        .as_str()
        .expect("a private VM has an address")
        .to_owned()
}

/// An nginx config serving `dir/www` on `port`, keeping every file it writes under `dir`.
fn nginx_conf(dir: &str, port: u16) -> String {
    format!(
        "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
         server {{ listen {port}; root {dir}/www; }}\n}}\n"
    )
}

/// nginx (Debian's) on a port of the host's own network, stopped on drop.
struct HostNginx {
    child: Child,
    dir: PathBuf,
}

impl HostNginx {
    fn start(label: &str, port: u16, content: &str) -> HostNginx {
        let dir = PathBuf::from("/tmp/feather-tests")
            .join(format!("nginx-{label}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/index.html"), content).unwrap();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir.to_str().unwrap(), port)).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (./setup.sh)");
        let nginx = HostNginx { child, dir };
        wait_for_port(&format!("127.0.0.1:{port}"));
        nginx
    }
}

impl Drop for HostNginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for_port(address: &str) {
    for _ in 0..200 {
        if TcpStream::connect(address).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {address}");
}

/// Starts nginx inside `vm` on its port 80, serving `content`, from files in the VM's layer.
fn vm_nginx(feather: &Feather, vm: &str, content: &str) {
    let dir = "/tmp/feather-test-site";
    let conf = nginx_conf(dir, 80);
    feather.sh(
        vm,
        &format!(
            "mkdir -p {dir}/www && echo '{content}' > {dir}/www/index.html && cat > {dir}/nginx.conf <<'EOF'\n{conf}EOF\n\
             nginx -c {dir}/nginx.conf </dev/null >/dev/null 2>&1"
        ),
    );
}

#[test]
fn nginx_on_port_80_in_two_vms_and_on_the_host_at_once() {
    let feather = Feather::new("net-nginx");
    let host_port_held = TestPort::new();
    let host_port = host_port_held.port;
    let _host = HostNginx::start("net-nginx", host_port, "the host\n");
    let (publish1_held, publish2_held) = (TestPort::new(), TestPort::new());
    let (publish1, publish2) = (publish1_held.port, publish2_held.port);
    feather.ok(&["create", "web1", "--publish", &format!("{publish1}:80")]);
    feather.ok(&[
        "create",
        "web2",
        "--net",
        "private",
        "--publish",
        &format!("{publish2}:80/tcp"),
    ]);
    feather.ok(&["start", "web1"]);
    feather.ok(&["start", "web2"]);
    vm_nginx(&feather, "web1", "web one");
    vm_nginx(&feather, "web2", "web two");
    let (a1, a2) = (address(&feather, "web1"), address(&feather, "web2"));
    assert_ne!(a1, a2);

    // All three answer at once, each with its own content: by address and by published port.
    assert_eq!(
        fetch(&format!("http://127.0.0.1:{host_port}/")).as_deref(),
        Some("the host\n")
    );
    assert_eq!(
        fetch(&format!("http://{a1}/")).as_deref(),
        Some("web one\n")
    );
    assert_eq!(
        fetch(&format!("http://{a2}/")).as_deref(),
        Some("web two\n")
    );
    assert_eq!(
        fetch(&format!("http://127.0.0.1:{publish1}/")).as_deref(),
        Some("web one\n")
    );
    assert_eq!(
        fetch(&format!("http://127.0.0.1:{publish2}/")).as_deref(),
        Some("web two\n")
    );

    // Inside, each VM reaches itself by its name, and nothing else by default.
    let own = feather.sh("web1", "curl -sS --max-time 3 http://web1/");
    assert_eq!(own, "web one\n");
    let vm_to_vm = feather.run(&[
        "exec",
        "web1",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "2",
        &format!("http://{a2}/"),
    ]);
    // curl's exit 28: timed out — the packets were dropped.
    assert_eq!(
        vm_to_vm.code, 28,
        "VM to VM must be dropped: {}{}",
        vm_to_vm.stdout, vm_to_vm.stderr
    );
    let vm_to_host = feather.run(&[
        "exec",
        "web1",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "2",
        &format!("http://feather-host:{host_port}/"),
    ]);
    // curl's exit 7: connection refused at once, as if nothing listened on the host.
    assert_eq!(
        vm_to_host.code, 7,
        "VM to host services must be refused: {}{}",
        vm_to_host.stdout, vm_to_host.stderr
    );
    let published_from_vm = feather.run(&[
        "exec",
        "web2",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "2",
        &format!("http://feather-host:{publish1}/"),
    ]);
    assert_eq!(
        published_from_vm.code, 7,
        "a VM reaches another only through channels a policy opens: {}",
        published_from_vm.stderr
    );

    let bridge = network(&feather, "web1")["bridge"]
        .as_str()
        .unwrap()
        .to_owned();
    let veths = [network(&feather, "web1"), network(&feather, "web2")]
        .map(|n| n["host_interface"].as_str().unwrap().to_owned());
    for vm in ["web1", "web2"] {
        feather.ok(&["rm", "--force", vm]);
    }
    let links = host_links();
    for link in &veths {
        assert!(
            !links.contains(&format!(" {link}")),
            "{link} left after rm: {links}"
        );
    }
    assert_bridge_returned(&feather, &bridge);
    assert!(
        !feather.root.join("network.toml").exists(),
        "the root forgot its network with its last VM"
    );
    assert!(
        fetch(&format!("http://127.0.0.1:{publish1}/")).is_none(),
        "published port closed with the VM"
    );
}

#[test]
fn inside_a_private_vm_names_and_routes_are_its_own_and_its_layer_stays_clean() {
    let feather = Feather::new("net-inside");
    feather.ok(&["create", "box"]);
    feather.ok(&["start", "box"]);
    let net = network(&feather, "box");
    let (address, gateway) = (
        net["address"].as_str().unwrap(),
        net["gateway"].as_str().unwrap(),
    );
    assert_eq!(net["mode"], "private");
    assert_eq!(net["confined"], true);
    let inside = feather.sh(
        "box",
        "ip -o -4 addr show dev eth0; ip route; cat /etc/hostname /etc/hosts /etc/resolv.conf",
    );
    assert!(inside.contains(&format!("inet {address}/")), "{inside}");
    assert!(
        inside.contains(&format!("default via {gateway} dev eth0")),
        "{inside}"
    );
    assert!(inside.contains(&format!("{address}\tbox")), "{inside}");
    assert!(
        inside.contains(&format!("{gateway}\tfeather-host")),
        "{inside}"
    );
    assert!(inside.contains("no route to a name server"), "{inside}");
    assert!(
        inside.starts_with("2: eth0") || inside.contains("eth0"),
        "{inside}"
    );
    assert_eq!(
        feather.ok(&["diff", "box"]),
        "",
        "the generated /etc files are not in the VM's layer"
    );
    let listing = feather.ok(&["ls"]);
    assert!(listing.contains(&format!("private {address}")), "{listing}");
}

#[test]
fn address_is_kept_across_stop_and_start_and_returned_by_rm() {
    let feather = Feather::new("net-keep");
    let base = ScratchBase::new("net-keep");
    feather.ok(&["create", "keep", "--base", base.as_str()]);
    let before = address(&feather, "keep");
    feather.ok(&["start", "keep"]);
    let inside = feather.sh("keep", "/bin/busybox ip -o -4 addr show dev eth0");
    assert!(inside.contains(&format!("inet {before}/")), "{inside}");
    feather.ok(&["stop", "keep"]);
    feather.ok(&["create", "other", "--base", base.as_str()]);
    feather.ok(&["start", "keep"]);
    assert_eq!(
        address(&feather, "keep"),
        before,
        "the address is the VM's, kept across stop/start"
    );
    let inside = feather.sh("keep", "/bin/busybox ip -o -4 addr show dev eth0");
    assert!(inside.contains(&format!("inet {before}/")), "{inside}");
    feather.ok(&["rm", "--force", "keep"]);
    feather.ok(&["create", "again", "--base", base.as_str()]);
    assert_eq!(
        address(&feather, "again"),
        before,
        "rm returned the address to the pool"
    );
}

#[test]
fn racing_creates_get_distinct_addresses() {
    let feather = Feather::new("net-race");
    let base = ScratchBase::new("net-race");
    let racers: Vec<_> = (0..6)
        .map(|i| {
            feather
                .command()
                .args(["create", &format!("racer{i}"), "--base", base.as_str()])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut racer in racers {
        assert!(racer.wait().unwrap().success());
    }
    let mut addresses: Vec<String> = (0..6)
        .map(|i| address(&feather, &format!("racer{i}")))
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(
        addresses.len(),
        6,
        "every create got its own address: {addresses:?}"
    );
}

#[test]
fn net_none_has_only_loopback_and_net_host_is_shown_as_not_confined() {
    let feather = Feather::new("net-modes");
    let base = ScratchBase::new("net-modes");
    let links = feather.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--base",
        base.as_str(),
        "--",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["lo"]);

    feather.ok(&["create", "shared", "--net", "host", "--base", base.as_str()]);
    feather.ok(&["start", "shared"]);
    let inside: Vec<String> = feather
        .sh("shared", "ls /sys/class/net")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let outside_lo: Vec<&String> = host.iter().filter(|l| *l != "lo").collect();
    assert!(
        outside_lo.iter().any(|l| inside.contains(l)),
        "a host VM sees the host's links: {inside:?} vs {host:?}"
    );
    let net = network(&feather, "shared");
    assert_eq!(net["mode"], "host");
    assert_eq!(net["confined"], false);
    assert!(net["address"].is_null());
    assert!(feather.ok(&["ls"]).contains("host (not confined)"));
    assert!(!feather.inspect("shared")["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "net"));

    let refused = feather.fails(&["create", "x", "--net", "none", "--publish", "8080:80"]);
    assert!(
        refused.contains("--publish needs --net private"),
        "{refused}"
    );
}

#[test]
fn a_published_port_already_taken_is_refused() {
    let feather = Feather::new("net-taken");
    let base = ScratchBase::new("net-taken");
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = feather.fails(&[
        "create",
        "clash",
        "--base",
        base.as_str(),
        "--publish",
        &format!("{port}:80"),
    ]);
    assert!(
        error.contains(&format!("host port {port}/tcp is already in use")),
        "{error}"
    );
    assert!(
        feather.ok(&["ls", "--json"]).trim() == "[]",
        "nothing was created"
    );

    // Taken between create and start: start fails, and leaves nothing running.
    let later_held = TestPort::new();
    let later = later_held.port;
    feather.ok(&[
        "create",
        "late",
        "--base",
        base.as_str(),
        "--publish",
        &format!("{later}:80"),
    ]);
    let squatter = TcpListener::bind(("0.0.0.0", later)).unwrap();
    let error = feather.fails(&["start", "late"]);
    assert!(error.contains("already in use"), "{error}");
    assert_eq!(feather.status("late"), "created");
    drop(squatter);
}

#[test]
fn a_killed_keeper_leaves_no_veth_or_rules_after_rm() {
    let feather = Feather::new("net-crash");
    let base = ScratchBase::new("net-crash");
    feather.ok(&["create", "doomed", "--base", base.as_str()]);
    feather.ok(&["start", "doomed"]);
    let net = network(&feather, "doomed");
    let (veth, bridge) = (
        net["host_interface"].as_str().unwrap().to_owned(),
        net["bridge"].as_str().unwrap().to_owned(),
    );
    assert!(host_links().contains(&veth));
    assert!(nft_tables().contains(&format!("table inet {bridge}")));
    feather.kill_keeper("doomed");
    feather.eventually("the keeper is gone", || {
        feather.status("doomed") == "crashed"
    });
    feather.ok(&["rm", "doomed"]);
    let links = host_links();
    assert!(!links.contains(&veth), "{links}");
    assert_bridge_returned(&feather, &bridge);
}

/// Asserts that `bridge`, the root's until its last VM went, is gone with its firewall tables
/// and its host-wide claim (see `HostTraces::of` for a name another root claimed since).
fn assert_bridge_returned(feather: &Feather, bridge: &str) {
    let traces = HostTraces::of(&feather.root, Some(bridge));
    assert!(
        traces.links.is_empty() && traces.nft_tables.is_empty(),
        "{bridge} left after rm: {traces:?}"
    );
    assert!(
        !bridge_claim(bridge).is_some_and(|claim| claim.names(&feather.root)),
        "the host-wide claim on {bridge} was not returned"
    );
}

#[test]
fn egress_is_per_vm_and_off_by_default() {
    let feather = Feather::new("net-egress");
    let base = ScratchBase::new("net-egress");
    feather.ok(&["create", "closed", "--base", base.as_str()]);
    feather.ok(&["create", "open", "--egress", "--base", base.as_str()]);
    feather.ok(&["start", "closed"]);
    feather.ok(&["start", "open"]);
    let table = network(&feather, "open")["nftables_table"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = Command::new("nft")
        .args(["list", "set", "inet", &table, "egress"])
        .output()
        .unwrap();
    let set = String::from_utf8_lossy(&out.stdout);
    assert!(set.contains(&address(&feather, "open")), "{set}");
    assert!(!set.contains(&address(&feather, "closed")), "{set}");

    // Each VM has its own chains, reached from the verdict maps, for later channels.
    let list = |family: &str, map: &str| {
        let out = Command::new("nft")
            .args(["list", "map", family, &table, map])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let closed = network(&feather, "closed");
    let (closed_address, closed_port) = (
        closed["address"].as_str().unwrap(),
        closed["host_interface"].as_str().unwrap(),
    );
    assert!(
        list("inet", "from_vm").contains(&format!("{closed_address} : jump vm-{closed_port}")),
        "{}",
        list("inet", "from_vm")
    );
    assert!(
        list("bridge", "from_port").contains(&format!("\"{closed_port}\" : jump vm-{closed_port}")),
        "{}",
        list("bridge", "from_port")
    );
    // Stopping one VM removes its entries and leaves the other's.
    feather.ok(&["stop", "closed"]);
    assert!(
        !list("inet", "from_vm").contains(closed_address),
        "{}",
        list("inet", "from_vm")
    );
    assert!(
        !list("bridge", "from_port").contains(closed_port),
        "{}",
        list("bridge", "from_port")
    );
    assert!(list("inet", "from_vm").contains(&address(&feather, "open")));
    let chains = Command::new("nft")
        .args(["list", "chains"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&chains.stdout).contains(&format!("vm-{closed_port}")));
}

#[test]
fn udp_ports_are_published_too() {
    let feather = Feather::new("net-udp");
    // Held below the ephemeral range: a port a `bind(0)` picked and let go could be another
    // test's socket's by the time the VM publishes it.
    let held = TestPort::new();
    let port = held.port;
    feather.ok(&["create", "echo", "--publish", &format!("{port}:5000/udp")]);
    feather.ok(&["start", "echo"]);
    feather.sh(
        "echo",
        "python3 -c 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((\"0.0.0.0\",5000))\n\
         while True:\n    d,a=s.recvfrom(100)\n    s.sendto(b\"echo:\"+d,a)' </dev/null >/dev/null 2>&1 &",
    );
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut answer = [0u8; 64];
    // The server inside may take a moment to bind (seconds on a loaded host): ask again
    // until it answers.
    let got = (0..120).find_map(|_| {
        client.send_to(b"ping", ("127.0.0.1", port)).unwrap();
        client.recv(&mut answer).ok()
    });
    assert_eq!(got.map(|n| &answer[..n]), Some(&b"echo:ping"[..]));
}

#[test]
fn two_state_roots_never_share_a_subnet() {
    let first = Feather::new("net-claim-a");
    let second = Feather::new("net-claim-b");
    let base = ScratchBase::new("net-claim");
    let subnet = TestSubnet::of("10.79");
    let subnet = subnet.cidr.as_str();
    let create = |feather: &Feather, vm: &str, subnet: &str| {
        feather
            .command()
            .args(["create", vm, "--base", base.as_str()])
            .env("FEATHER_SUBNET", subnet)
            .output()
            .unwrap()
    };
    assert!(create(&first, "one", subnet).status.success());
    let refused = create(&second, "two", subnet);
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        error.contains("is taken by state root") && error.contains(first.root.to_str().unwrap()),
        "{error}"
    );
    assert!(
        !second.root.join("network.toml").exists(),
        "a refused choice leaves nothing"
    );
    // Once the first root's last VM is gone, its subnet is free again.
    first.ok(&["rm", "one"]);
    assert!(create(&second, "two", subnet).status.success());
    assert_eq!(address(&second, "two"), subnet.replace(".0/24", ".2"));
}

/// How many namespaces a root's pool keeps ready (feather_net::pool::SIZE).
const POOL_SIZE: usize = 4;

fn pool_dir(feather: &Feather, part: &str) -> Vec<String> {
    crate::support::names_in(&feather.root.join("network-pool").join(part))
}

fn link_index(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

fn stop_throw_away(feather: &Feather, vm: &str, mut child: Child) {
    feather.ok(&["stop", "--time", "1", vm]);
    let _ = child.wait();
}

/// The pool (feather_net::pool): a `run --rm`'s teardown fills it while the bridge lingers; the
/// next throw-away VM takes a namespace of it, whose pair, address, lease and host end are its
/// own from then on, and the entry never comes back to the pool; with the root's last VM the
/// pool goes, and nothing is left.
#[test]
fn a_throw_away_vm_takes_a_pooled_namespace_and_the_pool_goes_with_the_last_vm() {
    let feather = Feather::new("net-pool");
    // Keeps the bridge in use, so that the pool outlives the linger.
    let keep = feather.spawn_throw_away("keep", &[]);
    let bridge = network(&feather, "keep")["bridge"]
        .as_str()
        .unwrap()
        .to_owned();
    feather.ok(&["run", "--rm", "--", "true"]);
    // `ls` waits for the teardown handed over, which fills the pool as it lingers.
    feather.ok(&["ls"]);
    let ready = pool_dir(&feather, "ready");
    assert_eq!(ready.len(), POOL_SIZE, "the pool is full: {ready:?}");
    let pooled: Vec<String> = ready.iter().map(|n| format!("fthp{n}")).collect();
    for host_end in &pooled {
        let master = std::fs::read_link(format!("/sys/class/net/{host_end}/master")).unwrap();
        assert!(
            master.ends_with(&bridge),
            "{host_end} is a port of {bridge}"
        );
    }

    let taker = feather.spawn_throw_away("taker", &[]);
    let net = network(&feather, "taker");
    let host_end = net["host_interface"].as_str().unwrap().to_owned();
    assert!(
        pooled.contains(&host_end),
        "{host_end} is one of {pooled:?}"
    );
    let inside: u32 = feather
        .ok(&["exec", "taker", "--", "cat", "/sys/class/net/eth0/iflink"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        inside,
        link_index(&host_end),
        "the VM's eth0 is the pooled pair's"
    );
    let vm_address = net["address"].as_str().unwrap().to_owned();
    let shown = feather.ok(&[
        "exec", "taker", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(
        shown.contains(&format!("{vm_address}/")),
        "the VM's own address on eth0: {shown}"
    );
    let lease =
        std::fs::read_to_string(feather.root.join("network-leases").join(&vm_address)).unwrap();
    assert_eq!(
        lease.trim(),
        feather.inspect("taker")["config"]["id"].as_str().unwrap()
    );
    assert!(
        !pool_dir(&feather, "ready")
            .iter()
            .any(|n| host_end.ends_with(n.as_str())),
        "a taken namespace is never in the pool again"
    );
    // The VM → host policy holds for it as for any VM: its chain is reached by its address.
    let tables = crate::support::nft_inet_table(&bridge);
    assert!(
        tables.contains(&format!("{vm_address} : jump vm-{host_end}")),
        "{tables}"
    );

    stop_throw_away(&feather, "taker", taker);
    stop_throw_away(&feather, "keep", keep);
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
    // The root's network lingers for the next throw-away VM (feather_net::linger).
    feather.ok(&["network", "down"]);
    let traces = crate::support::HostTraces::of(&feather.root, Some(&bridge));
    assert_eq!(
        traces,
        crate::support::HostTraces::default(),
        "left on the host"
    );
    assert!(
        !feather.root.join("network-pool").exists(),
        "the pool is gone"
    );
    assert!(
        std::fs::read_dir(feather.root.join("network-leases"))
            .map_or(true, |mut leases| leases.next().is_none()),
        "every lease is returned"
    );
}

/// Fills the root's pool while VM `keep` holds the bridge, and starts VM `vm`, which takes a
/// pooled namespace. Returns the running `vm`, its bridge and its host end.
fn pooled_vm_running(feather: &Feather, keep: &str, vm: &str) -> (Child, String, String) {
    let bridge = network(feather, keep)["bridge"]
        .as_str()
        .unwrap()
        .to_owned();
    feather.ok(&["run", "--rm", "--", "true"]);
    // `ls` waits for the teardown handed over, which fills the pool as it lingers.
    feather.ok(&["ls"]);
    assert!(
        !pool_dir(feather, "ready").is_empty(),
        "the pool has an entry to take"
    );
    let child = feather.spawn_throw_away(vm, &[]);
    let host_end = network(feather, vm)["host_interface"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        host_end.starts_with("fthp"),
        "{vm} took a pooled pair: {host_end}"
    );
    (child, bridge, host_end)
}

/// A VM that took a pooled namespace is a VM on the bridge like any other: when the root's
/// other VMs end and their teardowns' linger is over, its bridge and firewall tables stay while
/// it runs (they went, and left it without a network, while its host end's pooled name made it
/// count as a spare pair), and go with it.
#[test]
fn a_vm_on_a_pooled_pair_keeps_its_bridge_and_tables_after_the_other_vms_end() {
    let feather = Feather::new("net-pool-alone");
    let keep = feather.spawn_throw_away("keep", &[]);
    let (taker, bridge, host_end) = pooled_vm_running(&feather, "keep", "taker");
    stop_throw_away(&feather, "keep", keep);
    // Waits for keep's teardown (not for its linger: the network stays for the next VM).
    feather.ok(&["ls"]);
    let master = std::fs::read_link(format!("/sys/class/net/{host_end}/master"));
    assert!(
        master.as_ref().is_ok_and(|m| m.ends_with(&bridge)),
        "taker's host end {host_end} is still a port of {bridge}: {master:?}\n{}",
        host_links()
    );
    let vm_address = address(&feather, "taker");
    let tables = crate::support::nft_inet_table(&bridge);
    assert!(
        tables.contains(&format!("{vm_address} : jump vm-{host_end}")),
        "the VM's firewall entries stay: {tables}"
    );
    assert_eq!(feather.status("taker"), "running");

    stop_throw_away(&feather, "taker", taker);
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
    // The root's network lingers for the next throw-away VM (feather_net::linger).
    feather.ok(&["network", "down"]);
    let traces = crate::support::HostTraces::of(&feather.root, Some(&bridge));
    assert_eq!(
        traces,
        crate::support::HostTraces::default(),
        "left on the host"
    );
    assert!(
        !feather.root.join("network-pool").exists(),
        "the pool is gone"
    );
}

/// A keeper killed while its VM runs on a pooled pair it took (the entry marked taken, its
/// folder kept until the teardown) leaves nothing once the crashed VM is removed.
#[test]
fn a_killed_keeper_of_a_vm_on_a_pooled_pair_leaves_nothing() {
    let feather = Feather::new("net-pool-killed");
    let keep = feather.spawn_throw_away("keep", &[]);
    let (mut taker, bridge, _) = pooled_vm_running(&feather, "keep", "taker");
    assert_eq!(
        pool_dir(&feather, "claimed").len(),
        1,
        "the taken entry is kept while its VM runs"
    );
    taker.kill().unwrap();
    let _ = taker.wait();
    // A short-lived child the keeper forked (a hiding of a root another test registered, a
    // spawn before its exec) holds the keeper lock's open file until it ends.
    feather.eventually("the killed keeper's lock is let go", || {
        feather.status("taker") == "crashed"
    });
    // `rm` removes what a crashed keeper left, as for any VM.
    feather.ok(&["rm", "taker"]);
    stop_throw_away(&feather, "keep", keep);
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
    // The root's network lingers for the next throw-away VM (feather_net::linger).
    feather.ok(&["network", "down"]);
    let traces = crate::support::HostTraces::of(&feather.root, Some(&bridge));
    assert_eq!(
        traces,
        crate::support::HostTraces::default(),
        "left on the host"
    );
    assert!(
        !feather.root.join("network-pool").exists(),
        "the pool is gone"
    );
    assert!(
        std::fs::read_dir(feather.root.join("network-leases"))
            .map_or(true, |mut leases| leases.next().is_none()),
        "every lease is returned"
    );
}

/// The finisher of a `run --rm` that took a pooled namespace puts one back even when another
/// process holds the pool's refill lock as it comes to refill: it waits for that refill, then
/// tops the pool up. It left the refill to the holder, which may have looked at the pool before
/// the VM took its entry: in a script's loop the pool then ran down to empty, and the runs that
/// found it so made their namespaces on the way to their command.
#[test]
fn a_finisher_refills_the_pool_after_a_refill_under_way() {
    let feather = Feather::new("net-pool-busy");
    // Keeps the bridge in use: the pool is refilled after every `run --rm`.
    let keep = feather.spawn_throw_away("keep", &[]);
    feather.ok(&["run", "--rm", "--", "true"]);
    feather.ok(&["ls"]);
    assert_eq!(
        pool_dir(&feather, "ready").len(),
        POOL_SIZE,
        "the pool is full"
    );

    // A refill under way, as far as the next finisher can tell: this test holds the lock.
    let lock_path = feather.root.join("network-pool/refill.lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .unwrap();
    lock.lock().unwrap();
    feather.ok(&["run", "--rm", "--", "true"]);
    // Until the finisher waits for the lock (another process with its file open while the
    // test holds it) or is done (its VM's folder gone): the test's lock goes only then.
    let as_the_kernel_spells_it = lock_path.canonicalize().unwrap();
    let waits = || !crate::support::other_openers(&as_the_kernel_spells_it).is_empty();
    let finishing = || {
        std::fs::read_dir(feather.root.join("vms"))
            .unwrap()
            .any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".removing-")
            })
    };
    let waited = std::cell::Cell::new(false);
    feather.eventually("the finisher waits for the refill lock or is done", || {
        waited.set(waits());
        waited.get() || !finishing()
    });
    assert!(
        waited.get(),
        "the finisher did not wait for the refill under way"
    );
    drop(lock);
    // `ls` waits for the teardown handed over, its refill included.
    feather.ok(&["ls"]);
    let ready = pool_dir(&feather, "ready");
    assert_eq!(
        ready.len(),
        POOL_SIZE,
        "the entry the VM took is replaced: {ready:?}"
    );

    stop_throw_away(&feather, "keep", keep);
    feather.ok(&["network", "down"]);
    assert!(
        !feather.root.join("network-pool").exists(),
        "the pool is gone"
    );
}

/// What a refill killed half-way leaves — a `making-` entry with its namespace mounted, its
/// pair on the bridge and its lease — is removed by the next feather command, while another VM
/// keeps the bridge.
#[test]
fn an_interrupted_pool_refill_leaves_nothing_after_the_next_command() {
    let feather = Feather::new("net-pool-crash");
    let keep = feather.spawn_throw_away("keep", &[]);
    let net = network(&feather, "keep");
    let bridge = net["bridge"].as_str().unwrap().to_owned();
    let keep_address: std::net::Ipv4Addr = net["address"].as_str().unwrap().parse().unwrap();
    let address = std::net::Ipv4Addr::from(u32::from(keep_address) + 100);
    let entry = feather.root.join("network-pool/making-0badcafe");
    std::fs::create_dir_all(&entry).unwrap();
    let netns = entry.join("netns");
    std::fs::write(&netns, b"").unwrap();
    let sh = |script: &str| {
        let status = Command::new("sh").args(["-c", script]).status().unwrap();
        assert!(status.success(), "{script}");
    };
    let netns_text = netns.to_str().unwrap();
    sh(&format!("unshare --net={netns_text} true"));
    sh(&format!(
        "nsenter --net={netns_text} ip link add eth0 type veth peer name fthp0badcafe netns 1 \
         && ip link set fthp0badcafe master {bridge} up"
    ));
    std::fs::write(entry.join("link"), format!("fthp0badcafe {address}")).unwrap();
    std::fs::write(
        feather
            .root
            .join("network-leases")
            .join(address.to_string()),
        "pool-0badcafe",
    )
    .unwrap();

    feather.ok(&["ls"]);
    assert!(!entry.exists(), "the half-made entry is gone");
    assert!(!host_links().contains("fthp0badcafe"), "{}", host_links());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(netns_text), "its namespace is unmounted");
    assert!(
        !feather
            .root
            .join("network-leases")
            .join(address.to_string())
            .exists(),
        "its lease is returned"
    );
    assert_eq!(feather.status("keep"), "running");

    stop_throw_away(&feather, "keep", keep);
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
    // The root's network lingers for the next throw-away VM (feather_net::linger).
    feather.ok(&["network", "down"]);
    let traces = crate::support::HostTraces::of(&feather.root, Some(&bridge));
    assert_eq!(
        traces,
        crate::support::HostTraces::default(),
        "left on the host"
    );
}

/// `network down` whose root's lingering process is stopped (SIGSTOP, Ctrl-Z: here a stand-in
/// holding the wait file's lock, as the lingering process does) fails at once, naming it and
/// how to let it go on, and leaves the network as it was; before the bound, it waited for it
/// for good.
#[test]
fn network_down_behind_a_stopped_lingering_process_fails_naming_it() {
    let feather = Feather::new("net-down-linger-stopped");
    feather.ok(&["ls"]);
    let wait_file = feather.root.join("network-linger.wait");
    let said =
        crate::support::failed_behind_a_stopped_holder(&feather, &wait_file, &["network", "down"]);
    assert!(said.contains("stays up"), "{said}");
}

/// `network down` while the refill lock of the root's pool of namespaces is held by a stopped
/// process (SIGSTOP, Ctrl-Z: here a stand-in, as a refill holds it) fails at once, naming it
/// and how to let it go on, and leaves the network. Before, it waited for it the whole of its
/// patience, holding the removal lock every command waits for, then said a VM used it: the
/// test's limit is that patience (the command takes a second).
#[test]
fn network_down_behind_a_stopped_refill_fails_naming_it() {
    let feather = Feather::new("net-down-refill-stopped");
    // Lingering after it: the bridge, its tables and the pool.
    feather.ok(&["run", "--rm", "--", "true"]);
    std::fs::create_dir_all(feather.root.join("network-pool")).unwrap();
    let lock = feather.root.join("network-pool/refill.lock");
    let said = crate::support::failed_behind_a_stopped_holder_within(
        &feather,
        &lock,
        &["network", "down"],
        feather_vm::lifecycle::NETWORK_DOWN_PATIENCE,
    );
    assert!(said.contains("network stays"), "{said}");
    assert!(said.contains("refill.lock"), "{said}");
}

/// `network down` while a refill of the root's pool of namespaces holds the refill lock for
/// seconds (here the test, 3 s: a refill under load): it waits for it, then takes the network
/// down. Before, it gave up after 2 s, left it, and said a VM used it.
#[test]
fn network_down_waits_for_a_refill_under_way_and_takes_the_network_down() {
    let feather = Feather::new("net-down-refill");
    // Lingering after it: the bridge, its tables and the pool.
    feather.ok(&["run", "--rm", "--", "true"]);
    // The refill lock, as a refill holds it (made where the pool has no folder yet, as a
    // removal takes it too).
    std::fs::create_dir_all(feather.root.join("network-pool")).unwrap();
    let lock_path = feather.root.join("network-pool/refill.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    // A refill the run started may hold it a moment yet: waited for, with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lock.try_lock().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "a refill held {lock_path:?} for 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let down = feather
        .command()
        .args(["network", "down"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Longer than the removals' own patience (2 s), far shorter than `network down`'s.
    std::thread::sleep(Duration::from_secs(3));
    drop(lock);
    let limit = Duration::from_secs(120);
    let out = feather_testkit::ended_within(down, limit, "network down behind a refill");
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The network goes: `network down` says nothing of it staying.
    assert!(!out.stderr.contains("network stays"), "{}", out.stderr);
}
