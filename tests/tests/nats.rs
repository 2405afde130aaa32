//! Events across "hosts" over real `nats-server` processes (Debian's
//! package, installed by `.ci/run`): process groups with separate IPC
//! servers stand for machines. JetStream servers keep their store in a
//! temporary directory; a TCP proxy in the test cuts one process off.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serve_common_tests::Proc;
use serve_common_tests::http_support::get;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` on free loopback ports, killed on drop.
struct NatsServer {
    child: Child,
    port: u16,
    monitor: u16,
    args: Vec<String>,
    _store: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// With JetStream, its store in a temporary directory.
    fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), true, extra)
    }

    /// Without JetStream.
    fn start_plain(extra: &[&str]) -> Self {
        Self::start_on(free_port(), false, extra)
    }

    fn start_on(port: u16, jetstream: bool, extra: &[&str]) -> Self {
        let monitor = free_port();
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", &port.to_string()]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(["-m".to_owned(), monitor.to_string()]);
        let store = jetstream.then(|| tempfile::tempdir().unwrap());
        if let Some(store) = &store {
            args.extend([
                "-js".to_owned(),
                "-sd".to_owned(),
                store.path().to_str().unwrap().to_owned(),
            ]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = spawn_ready(&args);
        Self {
            child,
            port,
            monitor,
            args,
            _store: store,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again, same ports, arguments and store.
    fn restart(&mut self) {
        self.kill();
        self.child = spawn_ready(&self.args);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `nats-server` and waits for its "Server is ready" line.
fn spawn_ready(args: &[String]) -> Child {
    let mut child = Command::new("nats-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server is installed (.ci/run installs Debian's nats-server)");
    let stderr = child.stderr.take().unwrap();
    let (ready, is_ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = Some(ready);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !line.contains("Server is ready") {
                continue;
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
        }
    });
    is_ready
        .recv_timeout(Duration::from_secs(30))
        .expect("nats-server did not start");
    child
}

/// A JetStream cluster of `n` nodes on loopback, each with its own store.
struct Cluster {
    nodes: Vec<NatsServer>,
}

impl Cluster {
    fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let client: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        // Every node is started before waiting: the cluster needs a quorum
        // to say it is ready.
        let mut children = Vec::new();
        for i in 0..n {
            let store = tempfile::tempdir().unwrap();
            let others: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .map(|j| format!("\"nats://127.0.0.1:{}\"", routes[j]))
                .collect();
            let conf = dir.path().join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: \"127.0.0.1:{}\"\njetstream {{ store_dir: \"{}\" }}\ncluster {{\n  name: svc\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                    client[i],
                    store.path().display(),
                    routes[i],
                    others.join(", ")
                ),
            )
            .unwrap();
            let args = vec!["-c".to_owned(), conf.to_str().unwrap().to_owned()];
            let (tx, rx) = mpsc::channel();
            let thread_args = args.clone();
            std::thread::spawn(move || {
                let _ = tx.send(spawn_ready(&thread_args));
            });
            children.push((rx, args, store, client[i]));
        }
        let nodes = children
            .into_iter()
            .map(|(rx, args, store, port)| NatsServer {
                child: rx.recv_timeout(Duration::from_secs(60)).unwrap(),
                port,
                monitor: 0,
                args,
                _store: Some(store),
            })
            .collect();
        // The configs stay readable while the nodes run.
        std::mem::forget(dir);
        Self { nodes }
    }
}

/// A TCP proxy in front of a server: [`cut`](Self::cut) closes every
/// connection through it and refuses new ones until
/// [`restore`](Self::restore), a network partition for one process.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (is_cut, conns) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if is_cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buffer = [0; 16 * 1024];
                        while let Ok(n) = from.read(&mut buffer) {
                            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { port, cut, open }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// One process of a service: the `nats_host` helper.
struct Host {
    proc: Proc,
    pid: u32,
    ipc: String,
    _dir: tempfile::TempDir,
}

impl Host {
    /// Starts a process of a new group (its own IPC server) or, with
    /// `group`, one joining that group's IPC server.
    fn start(config: &str, group: Option<&Host>, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_nats_host"));
        command
            .args(args)
            .current_dir(dir.path())
            .env("SERVE_COMMON_CONFIG", dir.path().join("config.toml"))
            .env("NO_COLOR", "1")
            .env_remove("SERVCOM_IPC_ADDR");
        if let Some(group) = group {
            command.env("SERVCOM_IPC_ADDR", &group.ipc);
        }
        let mut proc = Proc::spawn(&mut command, true);
        let line = proc.expect(if args.contains(&"--no-wait") || args.contains(&"--ipc") {
            "started "
        } else {
            "ready "
        });
        let mut words = line.split(' ').skip(1);
        let pid = words.next().unwrap().parse().unwrap();
        let ipc = words.next().unwrap_or_default().to_owned();
        Self {
            proc,
            pid,
            ipc,
            _dir: dir,
        }
    }

    fn send(&mut self, line: &str) {
        self.proc.send(line);
    }

    /// Waits for `got <pid> <event> <text>`.
    fn expect_got(&mut self, event: &str, text: &str) {
        let line = format!("got {} {event} {text}", self.pid);
        self.proc.expect_line(&line);
    }

    /// How many times this process printed `got ... <event> <text>` so far.
    fn count_got(&self, event: &str, text: &str) -> usize {
        let line = format!("got {} {event} {text}", self.pid);
        self.proc.seen().iter().filter(|l| **l == line).count()
    }

    fn stats(&mut self) -> String {
        self.send("stats");
        self.proc.expect("stats ")
    }

    /// One counter of [`stats`](Self::stats).
    fn stat(&mut self, name: &str) -> u64 {
        let stats = self.stats();
        let prefix = format!("{name}=");
        stats
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
            .parse()
            .unwrap()
    }

    /// Notifies `count` `bulk.<name>` events as fast as it can.
    fn flood(&mut self, name: &str, count: u64) {
        self.send(&format!("flood bulk.{name} {count}"));
    }

    /// The `job.*` payloads this process handled (one-per-service).
    fn jobs(&self) -> Vec<String> {
        std::fs::read_to_string(self._dir.path().join("jobs.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for `count` events from each of `senders`: (missing, dups,
    /// disorder).
    fn tally(&mut self, senders: &[u32], count: u64, timeout_s: u64) -> (u64, u64, u64) {
        let senders: Vec<String> = senders.iter().map(u32::to_string).collect();
        self.send(&format!("tally {timeout_s} {} {count}", senders.join(",")));
        let line = self.proc.expect(&format!("tally {} ", self.pid));
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .unwrap()
                .parse()
                .unwrap()
        };
        (field("missing"), field("dups"), field("disorder"))
    }

    /// Waits until every event this process notified is confirmed (the
    /// stream acknowledged it), at most `timeout`.
    fn drained(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stat("buffered") == 0 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            // A counter has no notification; read it again shortly.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `sent` is at least `at_least` (the sync request a
    /// reconnection notifies goes out after `Connected`, so after the
    /// buffer drained); returns it.
    fn sent_reaches(&mut self, at_least: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let sent = self.stat("sent");
            if sent >= at_least || Instant::now() > deadline {
                return sent;
            }
            // A counter has no notification; read it again shortly.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Quits and returns the process's log (stderr).
    fn quit(mut self) -> String {
        self.send("quit");
        let (status, log) = self.proc.finish();
        assert!(status.success(), "{status:?}: {log}");
        log
    }
}

/// A service's config over NATS: JetStream (the default) unless `extra`
/// says otherwise; `stream` goes into `[events.nats.stream]`.
fn config_with(url: &str, extra: &str, stream: &str) -> String {
    format!(
        "[events.nats]\nurl = \"{url}\"\nsubject_prefix = \"test.svc\"\nmax_reconnect_delay_ms = 200\n{extra}\n[events.nats.stream]\n{stream}\n[logging]\nlevel = \"INFO\"\n"
    )
}

fn config(url: &str, extra: &str) -> String {
    config_with(url, extra, "")
}

/// At most once (core NATS, no stream).
fn amo(url: &str, extra: &str) -> String {
    config(url, &format!("delivery = \"at-most-once\"\n{extra}"))
}

/// Every process of both groups runs each handler exactly once; an event
/// notified in one goes to all: `sender` notifies `name`, then a sentinel,
/// and each host must have printed `name` exactly once by the sentinel.
fn notify_everywhere(hosts: &mut [Host], sender: usize, name: &str, text: &str) {
    hosts[sender].send(&format!("notify {name} {text}"));
    hosts[sender].send(&format!("notify app.sentinel {name}-{text}"));
    for host in hosts.iter_mut() {
        host.expect_got("app.sentinel", &format!("{name}-{text}"));
        assert_eq!(
            host.count_got(name, text),
            1,
            "process {} saw {name} {text}",
            host.pid
        );
    }
}

fn two_hosts_of_two(config: &str) -> [Host; 4] {
    let a1 = Host::start(config, None, &[]);
    let a2 = Host::start(config, Some(&a1), &[]);
    let b1 = Host::start(config, None, &[]);
    let b2 = Host::start(config, Some(&b1), &[]);
    assert_eq!(a1.ipc, a2.ipc);
    assert_ne!(a1.ipc, b1.ipc, "two groups, two IPC servers");
    [a1, a2, b1, b2]
}

/// Events once everywhere, local ones stay, a config set reaches all.
fn run_once_everywhere(mut hosts: [Host; 4]) {
    for sender in 0..hosts.len() {
        notify_everywhere(&mut hosts, sender, "app.hello", &format!("from-{sender}"));
    }

    // Local-only: the notifier's handlers only.
    hosts[0].send("local app.private secret");
    hosts[0].expect_got("app.private", "secret");
    hosts[0].send("notify app.sentinel after-local");
    for host in hosts.iter_mut() {
        host.expect_got("app.sentinel", "after-local");
    }
    for host in &hosts[1..] {
        assert_eq!(
            host.count_got("app.private", "secret"),
            0,
            "local-only event left {}",
            host.pid
        );
    }

    // A runtime config set in one process of host B reaches every process.
    hosts[3].send("set app.value 42");
    for host in hosts.iter_mut() {
        let line = format!("config {} app.value=\"42\"", host.pid);
        host.proc.expect(&line);
    }
    for host in hosts {
        let log = host.quit();
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[test]
fn jetstream_events_run_once_in_every_process_of_both_hosts_local_ones_stay_and_sets_reach_all() {
    let server = NatsServer::start(&[]);
    run_once_everywhere(two_hosts_of_two(&config(&server.url(), "")));
}

#[test]
fn at_most_once_events_run_once_in_every_process_of_both_hosts() {
    let server = NatsServer::start_plain(&[]);
    run_once_everywhere(two_hosts_of_two(&amo(&server.url(), "")));
}

#[test]
fn a_jetstream_server_killed_and_restarted_mid_stream_loses_and_repeats_nothing() {
    let mut server = NatsServer::start(&[]);
    let config = config(&server.url(), "");
    let mut s1 = Host::start(&config, None, &[]);
    let mut s2 = Host::start(&config, None, &[]);
    let mut receiver = Host::start(&config, None, &[]);
    let senders = [s1.pid, s2.pid];
    // Enough that the server cannot have confirmed them all by the kill.
    const EVENTS: u64 = 40_000;
    s1.flood("restart", EVENTS);
    s2.flood("restart", EVENTS);
    s1.proc.expect("flooded ");
    s2.proc.expect("flooded ");
    // Mid-stream: the bus has taken them all; the links are sending.
    let unconfirmed = s1.stat("buffered") + s2.stat("buffered");
    server.kill();
    assert!(unconfirmed > 0, "not mid-stream: every event was confirmed");
    server.restart();
    for host in [&mut s1, &mut s2, &mut receiver] {
        let (missing, dups, _) = host.tally(&senders, EVENTS, 120);
        assert_eq!((missing, dups), (0, 0), "process {}", host.pid);
    }
    for sender in [&mut s1, &mut s2] {
        assert!(
            sender.drained(Duration::from_secs(30)),
            "{}",
            sender.stats()
        );
        assert_eq!(sender.stat("dropped"), 0, "{}", sender.stats());
    }
    for host in [s1, s2, receiver] {
        let log = host.quit();
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[test]
fn a_cluster_node_killed_mid_stream_loses_and_repeats_nothing() {
    let mut cluster = Cluster::start(3);
    let stream = "replicas = 3";
    let mut hosts: Vec<Host> = cluster
        .nodes
        .iter()
        .map(|node| Host::start(&config_with(&node.url(), "", stream), None, &[]))
        .collect();
    let senders = [hosts[0].pid, hosts[1].pid];
    // Enough that the stream cannot have confirmed them all by the kill
    // (10,000 each was, once the bus got faster).
    const EVENTS: u64 = 40_000;
    hosts[0].flood("cluster", EVENTS);
    hosts[1].flood("cluster", EVENTS);
    hosts[0].proc.expect("flooded ");
    hosts[1].proc.expect("flooded ");
    // The node the first sender is connected to, while it sends.
    let unconfirmed = hosts[0].stat("buffered");
    cluster.nodes[0].kill();
    assert!(unconfirmed > 0, "not mid-stream: every event was confirmed");
    for host in hosts.iter_mut() {
        let (missing, dups, _) = host.tally(&senders, EVENTS, 120);
        assert_eq!((missing, dups), (0, 0), "process {}", host.pid);
    }
    assert!(
        hosts[0].drained(Duration::from_secs(30)),
        "{}",
        hosts[0].stats()
    );
    assert_eq!(hosts[0].stat("dropped"), 0);
    for host in hosts {
        host.quit();
    }
}

#[test]
fn a_receiver_cut_off_for_more_than_65536_events_gets_them_all_in_order() {
    let server = NatsServer::start(&[]);
    let proxy = Proxy::start(server.port);
    let mut receiver = Host::start(&config(&proxy.url(), ""), None, &[]);
    let mut sender = Host::start(&config(&server.url(), ""), None, &[]);
    // Both are connected: the receiver's consumer is in place.
    sender.send("notify app.hello before");
    receiver.expect_got("app.hello", "before");

    proxy.cut();
    receiver.proc.expect_line(&format!(
        "nats {} nats:disconnected {}",
        receiver.pid,
        proxy.url()
    ));
    const MISSED: u64 = 70_000;
    sender.flood("missed", MISSED);
    sender.proc.expect("flooded ");
    assert!(
        sender.drained(Duration::from_secs(60)),
        "{}",
        sender.stats()
    );
    proxy.restore();
    let (missing, dups, disorder) = receiver.tally(&[sender.pid], MISSED, 50);
    assert_eq!(
        (missing, dups, disorder),
        (0, 0, 0),
        "{} / sender {} {:?}\n{}",
        receiver.stats(),
        sender.stats(),
        receiver
            .proc
            .seen()
            .iter()
            .rfind(|l| l.starts_with("tally")),
        receiver.proc.stderr_so_far()
    );
    assert_eq!(receiver.stat("dropped_incoming"), 0);
    receiver.quit();
    sender.quit();
}

/// A raw NATS connection speaking the protocol by hand: what a hostile
/// peer with access to the server can send.
struct RawClient(TcpStream);

impl RawClient {
    fn connect(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n")
            .unwrap();
        Self(stream)
    }

    fn publish(&mut self, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
        let mut frame = Vec::new();
        if headers.is_empty() {
            frame.extend(format!("PUB {subject} {}\r\n", payload.len()).into_bytes());
        } else {
            let mut block = String::from("NATS/1.0\r\n");
            for (name, value) in headers {
                block.push_str(&format!("{name}: {value}\r\n"));
            }
            block.push_str("\r\n");
            frame.extend(
                format!(
                    "HPUB {subject} {} {}\r\n{block}",
                    block.len(),
                    block.len() + payload.len()
                )
                .into_bytes(),
            );
        }
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.0.write_all(&frame).unwrap();
    }

    /// Waits until the server has processed everything sent so far.
    fn ping(&mut self) {
        self.0.write_all(b"PING\r\n").unwrap();
        let mut reader = BufReader::new(self.0.try_clone().unwrap());
        let mut line = String::new();
        while !line.starts_with("PONG") {
            line.clear();
            reader.read_line(&mut line).unwrap();
        }
    }
}

/// The event envelope (see serve-common's `event/nats/wire.rs`).
fn envelope(origin: u64, seq: u64, name: &str, payload: &[u8]) -> Vec<u8> {
    let mut bytes = b"SCE1".to_vec();
    bytes.extend(origin.to_le_bytes());
    bytes.extend(seq.to_le_bytes());
    bytes.extend((name.len() as u32).to_le_bytes());
    bytes.extend(name.as_bytes());
    bytes.extend(payload);
    bytes
}

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).unwrap();
    bytes
}

fn forged_messages_are_refused(server: &NatsServer, config: &str) {
    let mut a = Host::start(config, None, &[]);
    let mut b = Host::start(config, None, &[]);
    let mut raw = RawClient::connect(server.port);
    let text = cbor(&"forged");
    raw.publish("test.svc.app.x", &[], b"garbage");
    raw.publish(
        "test.svc.app.x",
        &[],
        &envelope(7, u64::MAX - 1, "app.x", &text),
    );
    raw.publish("test.svc.app.x", &[], &envelope(7, 1, "app.other", &text));
    raw.publish(
        "test.svc.app.x",
        &[("Nats-Msg-Id", "0000000000000007-99")],
        &envelope(7, 2, "app.x", &text),
    );
    let deep = vec!["k"; 40].join(".");
    let set = serve_common::config::ConfigSet {
        path: format!("app.{deep}"),
        value: Some(toml::Value::Integer(1)),
        clock: 1,
        origin: 7,
    };
    raw.publish(
        "test.svc.config_set",
        &[],
        &envelope(7, 3, "config_set", &cbor(&set)),
    );
    raw.ping();
    // Every process stays up and keeps receiving.
    a.send("notify app.after forgeries");
    b.expect_got("app.after", "forgeries");
    b.send("notify app.back fine");
    a.expect_got("app.back", "fine");
    for host in [&mut a, &mut b] {
        assert_eq!(host.stat("malformed"), 4, "{}", host.stats());
        assert_eq!(host.count_got("app.x", "forged"), 0);
        assert_eq!(host.count_got("app.other", "forged"), 0);
        host.proc
            .expect_stderr(0, &["absurd sequence number", "not a well-formed event"]);
        host.proc.expect_stderr(0, &["is not its subject's"]);
        host.proc.expect_stderr(0, &["Nats-Msg-Id"]);
        host.proc
            .expect_stderr(0, &["ignoring a config set from another process"]);
    }
    a.quit();
    b.quit();
}

#[test]
fn forged_messages_on_the_stream_are_refused_with_a_log_line_and_nothing_stops() {
    let server = NatsServer::start(&[]);
    forged_messages_are_refused(&server, &config(&server.url(), ""));
}

#[test]
fn forged_messages_at_most_once_are_refused_too() {
    let server = NatsServer::start_plain(&[]);
    forged_messages_are_refused(&server, &amo(&server.url(), ""));
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (.ci/run installs Debian's openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA named `name` (`<name>.pem`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let subject = format!("/CN={name}");
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
            "-keyout", &key, "-out", &pem,
        ],
    );
}

/// A certificate `<name>.pem` (key `<name>.key`) signed by the CA `ca`,
/// for 127.0.0.1.
fn make_cert(dir: &Path, ca: &str, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth, clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

#[test]
fn tls_with_client_certificates_works_and_a_wrong_ca_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_cert(d, "ca", "server");
    make_cert(d, "ca", "client");
    let conf = d.join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: \"{0}/server.pem\"\n  key_file: \"{0}/server.key\"\n  ca_file: \"{0}/ca.pem\"\n  verify: true\n}}\n",
            d.display()
        ),
    )
    .unwrap();
    let server = NatsServer::start(&["-c", conf.to_str().unwrap()]);
    let url = format!("tls://127.0.0.1:{}", server.port);
    let tls = |ca: &str, client: bool| {
        let mut extra = format!("tls = true\nca = \"{}/{ca}.pem\"\n", d.display());
        if client {
            extra.push_str(&format!(
                "client_cert = \"{0}/client.pem\"\nclient_key = \"{0}/client.key\"\n",
                d.display()
            ));
        }
        config(&url, &extra)
    };
    let mut a = Host::start(&tls("ca", true), None, &[]);
    let mut b = Host::start(&tls("ca", true), None, &[]);
    a.send("notify app.secure over-tls");
    b.expect_got("app.secure", "over-tls");

    // A CA that did not sign the server's certificate.
    let mut wrong = Host::start(&tls("other-ca", true), None, &["--no-wait"]);
    let error = wrong.proc.expect(&format!("nats {} nats:error", wrong.pid));
    assert!(
        error.to_lowercase().contains("certificate"),
        "not a clear error: {error}"
    );
    wrong.send("local app.still up");
    wrong.expect_got("app.still", "up");
    wrong.send("health");
    let health = wrong.proc.expect("health ");
    assert!(health.contains("Err"), "{health}");

    // No client certificate: the server (verify) refuses.
    let mut anonymous = Host::start(&tls("ca", false), None, &["--no-wait"]);
    anonymous
        .proc
        .expect(&format!("nats {} nats:error", anonymous.pid));
    anonymous.send("stats");
    assert!(anonymous.proc.expect("stats ").contains("connected=false"));
    for host in [a, b, wrong, anonymous] {
        host.quit();
    }
}

/// With `good` credentials (config lines), two processes exchange an
/// event; with `bad` ones a process gets a clear error, runs on with local
/// events, and `secret` (what `bad` holds) stays out of its log.
fn credentials_are_checked(server: &NatsServer, good: &str, bad: &str, secret: &str) {
    let mut refused = Host::start(&config(&server.url(), bad), None, &["--no-wait"]);
    let error = refused
        .proc
        .expect(&format!("nats {} nats:error", refused.pid));
    assert!(error.contains("refused the credentials"), "{error}");
    refused.send("local app.still up");
    refused.expect_got("app.still", "up");
    refused.send("notify app.buffered meanwhile");
    refused.expect_got("app.buffered", "meanwhile");
    let log = refused.quit();
    assert!(log.contains("refused the credentials"), "{log}");
    assert!(!log.contains(secret), "the secret is in the log: {log}");

    let mut a = Host::start(&config(&server.url(), good), None, &[]);
    let mut b = Host::start(&config(&server.url(), good), None, &[]);
    a.send("notify app.credentials work");
    b.expect_got("app.credentials", "work");
    a.quit();
    b.quit();
}

#[test]
fn a_token_works_and_a_wrong_one_is_a_clear_error() {
    let server = NatsServer::start(&["--auth", "s3cret-token"]);
    credentials_are_checked(
        &server,
        "token = \"s3cret-token\"",
        "token = \"not-it\"",
        "not-it",
    );
}

#[test]
fn an_nkey_works_and_an_unknown_one_is_a_clear_error() {
    let user = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nkey.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let server = NatsServer::start(&["-c", conf.to_str().unwrap()]);
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    credentials_are_checked(
        &server,
        &format!("nkey = \"{}\"", user.seed().unwrap()),
        &format!("nkey = \"{stranger}\""),
        &stranger,
    );
}

#[test]
fn wrong_credentials_are_a_clear_error_and_the_service_stays_up() {
    let server = NatsServer::start(&["--user", "svc", "--pass", "right"]);
    credentials_are_checked(
        &server,
        "user = \"svc\"\npassword = \"right\"",
        "user = \"svc\"\npassword = \"wrong\"",
        "wrong",
    );
}

#[test]
fn a_stream_with_other_settings_or_a_server_without_jetstream_is_a_clear_error() {
    let server = NatsServer::start(&[]);
    // The first process makes the stream with a one-hour max age.
    let first = Host::start(
        &config_with(&server.url(), "", "max_age_s = 3600"),
        None,
        &[],
    );
    let mut second = Host::start(&config(&server.url(), ""), None, &["--no-wait"]);
    let error = second
        .proc
        .expect(&format!("nats {} nats:error", second.pid));
    assert!(
        error.contains("other settings") && error.contains("max_age 3600 s, configured 86400 s"),
        "{error}"
    );
    second.send("health");
    let health = second.proc.expect("health ");
    assert!(
        health.contains("cannot be used") && health.contains("\"stream_reachable\":false"),
        "{health}"
    );
    second.quit();
    first.quit();

    let plain = NatsServer::start_plain(&[]);
    let mut host = Host::start(&config(&plain.url(), ""), None, &["--no-wait"]);
    let error = host.proc.expect(&format!("nats {} nats:error", host.pid));
    assert!(
        error.contains("-js") && error.contains("at-most-once"),
        "{error}"
    );
    host.send("local app.still up");
    host.expect_got("app.still", "up");
    host.quit();
}

#[test]
fn health_reports_the_stream_and_the_consumer_lag() {
    let server = NatsServer::start(&[]);
    let mut host = Host::start(&config(&server.url(), ""), None, &[]);
    host.send("health");
    let health = host.proc.expect("health ");
    assert!(health.starts_with("health Ok(())"), "{health}");
    for field in [
        "\"connected\":true",
        "\"delivery\":\"jetstream\"",
        "\"stream_reachable\":true",
        "\"consumer_lag\":0",
    ] {
        assert!(health.contains(field), "{field} in {health}");
    }
    host.quit();
}

#[test]
fn events_cross_a_route_between_two_cluster_nodes_at_most_once() {
    let (c1, c2) = (free_port(), free_port());
    let node1 = NatsServer::start_plain(&[
        "--cluster_name",
        "svc",
        "--cluster",
        &format!("nats://127.0.0.1:{c1}"),
        "--routes",
        &format!("nats://127.0.0.1:{c2}"),
    ]);
    let node2 = NatsServer::start_plain(&[
        "--cluster_name",
        "svc",
        "--cluster",
        &format!("nats://127.0.0.1:{c2}"),
        "--routes",
        &format!("nats://127.0.0.1:{c1}"),
    ]);
    let mut b = Host::start(&amo(&node2.url(), ""), None, &[]);
    let mut a = Host::start(&amo(&node1.url(), ""), None, &[]);
    // The route carries B's subscription to node 1 once it is up: wait
    // until node 1 lists it (the monitoring endpoint).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let routez = get(
            format!("127.0.0.1:{}", node1.monitor).parse().unwrap(),
            "/routez?subs=1",
        );
        // (`test.svc.>` or narrower; Go's JSON writes `>` as `\u003e`.)
        if routez.body.contains("\"test.svc.") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no route with B's subscription: {}",
            routez.body
        );
        // The monitoring endpoint has no notification to wait for.
        std::thread::sleep(Duration::from_millis(20));
    }
    a.send("notify app.routed over-the-route");
    b.expect_got("app.routed", "over-the-route");
    a.expect_got("app.routed", "over-the-route");
    b.send("notify app.back and-back");
    a.expect_got("app.back", "and-back");
    a.quit();
    b.quit();
}

#[test]
fn at_most_once_buffers_while_disconnected_and_counts_what_exceeds_the_buffer() {
    let mut server = NatsServer::start_plain(&[]);
    let mut sender = Host::start(&amo(&server.url(), ""), None, &[]);
    let mut small = Host::start(&amo(&server.url(), "buffer = 5"), None, &[]);
    // (Each has sent its config sync request at start-up.)
    let sent_before = sender.stat("sent");
    let small_sent_before = small.stat("sent");

    server.kill();
    // Both senders know the server is gone before they notify.
    for host in [&mut sender, &mut small] {
        let line = format!("nats {} nats:disconnected {}", host.pid, server.url());
        host.proc.expect_line(&line);
    }
    for n in 0..50 {
        sender.send(&format!("notify app.during {n}"));
        small.send(&format!("notify app.small {n}"));
    }
    // Both took all 50 (their own handlers ran); the small one's link
    // buffered 5 and dropped the other 45.
    sender.expect_got("app.during", "49");
    small.expect_got("app.small", "49");
    let deadline = Instant::now() + Duration::from_secs(30);
    while small.stat("dropped") != 45 || sender.stat("buffered") != 50 {
        assert!(
            Instant::now() < deadline,
            "{} / {}",
            small.stats(),
            sender.stats()
        );
    }

    // A runtime set made with the buffer full still gets out: the
    // config's own events are never dropped for room.
    small.send("set app.value 7");
    small
        .proc
        .expect(&format!("config {} app.value=\"7\"", small.pid));

    server.restart();
    for host in [&mut sender, &mut small] {
        host.proc
            .expect(&format!("nats {} nats:connected ", host.pid));
    }
    // The set may come in before the link says it is connected (while
    // the line above was awaited): a line seen then counts.
    sender
        .proc
        .expect_seen(&format!("config {} app.value=\"7\"", sender.pid));
    assert!(sender.drained(Duration::from_secs(30)));
    // Besides the buffered events: each asked for the sets made while it
    // was away (a config sync, sent once reconnected), and may have
    // answered the other's.
    let expected = sent_before + 50 + 1;
    let extra =
        sender.sent_reaches(expected, Duration::from_secs(30)) as i64 - (expected as i64 - 1);
    assert!(extra == 1 || extra == 2, "{}", sender.stats());
    assert!(small.drained(Duration::from_secs(30)));
    let expected = small_sent_before + 5 + 1 + 1;
    let extra =
        small.sent_reaches(expected, Duration::from_secs(30)) as i64 - (expected as i64 - 1);
    assert!(extra == 1 || extra == 2, "{}", small.stats());
    assert_eq!(small.stat("dropped"), 45);
    let log = small.quit();
    assert!(log.contains("buffer full"), "{log}");
    sender.quit();
}

#[test]
fn an_unreachable_server_at_start_up_then_events_flow_without_a_restart() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut early = Host::start(&config(&url, ""), None, &["--no-wait"]);
    early.send("notify app.early buffered");
    early.expect_got("app.early", "buffered");
    assert!(early.stats().contains("connected=false"));

    let _server = NatsServer::start_on(port, true, &[]);
    let mut late = Host::start(&config(&url, ""), None, &[]);
    // `early` connects on its own (no restart); its next event arrives.
    early.send("notify app.later flowing");
    late.expect_got("app.later", "flowing");
    assert!(early.drained(Duration::from_secs(30)));
    let stats = early.stats();
    assert!(stats.contains("connected=true"), "{stats}");
    assert!(
        early.stat("sent") >= 2,
        "the buffered event was sent too: {stats}"
    );
    early.quit();
    late.quit();
}

#[test]
fn an_oversize_event_is_an_error_to_the_notifier() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "max_payload: 4096\n").unwrap();
    let server = NatsServer::start(&["-c", conf.to_str().unwrap()]);
    let mut host = Host::start(&config(&server.url(), ""), None, &[]);
    host.send("try app.big 100000");
    let line = host.proc.expect("tried ");
    assert!(
        line.contains("error") && line.contains("at most 4096 bytes"),
        "{line}"
    );
    host.send("try app.small 10");
    host.proc.expect("tried ok");
    host.quit();
}

/// The `job.*` payloads handled across `hosts` (and the logs of hosts
/// already killed, in `killed`), waiting until `count` distinct ones from
/// `sender` are there: (missing, duplicates, per-process counts).
fn jobs_handled(
    hosts: &[&Host],
    killed: &[Vec<String>],
    sender: u32,
    count: u64,
) -> (u64, u64, Vec<usize>) {
    jobs_handled_but(hosts, killed, sender, count, 0)
}

/// [`jobs_handled`], done once at most `allowed` are missing.
fn jobs_handled_but(
    hosts: &[&Host],
    killed: &[Vec<String>],
    sender: u32,
    count: u64,
    allowed: u64,
) -> (u64, u64, Vec<usize>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut all: Vec<Vec<String>> = hosts.iter().map(|h| h.jobs()).collect();
        all.extend(killed.iter().cloned());
        let mut times = std::collections::HashMap::<String, u64>::new();
        for line in all.iter().flatten() {
            *times.entry(line.clone()).or_default() += 1;
        }
        let missing = (0..count)
            .filter(|n| !times.contains_key(&format!("{sender}-{n}")))
            .count() as u64;
        let dups = times.values().map(|t| t - 1).sum();
        if missing <= allowed || Instant::now() > deadline {
            return (missing, dups, all.iter().map(Vec::len).collect());
        }
        // The handlers write files: nothing to wait on but the files.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn three_processes(config: &str) -> Vec<Host> {
    (0..3).map(|_| Host::start(config, None, &[])).collect()
}

/// `hosts[sender]` notifies 3,000 `job.run` events; each runs exactly once
/// in the whole service, and in at least `sharing` processes.
fn jobs_run_once(hosts: Vec<Host>, sender: usize, sharing: usize) {
    let mut hosts = hosts;
    let pid = hosts[sender].pid;
    hosts[sender].send("flood job.run 3000");
    hosts[sender].proc.expect("flooded ");
    let refs: Vec<&Host> = hosts.iter().collect();
    let (missing, dups, per_process) = jobs_handled(&refs, &[], pid, 3_000);
    assert_eq!((missing, dups), (0, 0), "{per_process:?}");
    assert!(
        per_process.iter().filter(|n| **n > 0).count() >= sharing,
        "the work was not shared: {per_process:?}"
    );
    for host in hosts {
        host.quit();
    }
}

/// `hosts[sender]` notifies 3,000 `job.run` events; the last process is
/// killed once it has run 20: (its pid, what it had run).
fn kill_the_last_mid_jobs(hosts: &mut Vec<Host>, sender: usize) -> (u32, Vec<String>) {
    hosts[sender].send("flood job.run 3000");
    hosts[sender].proc.expect("flooded ");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The jobs are written to files: nothing to wait on but the file.
    while hosts.last().unwrap().jobs().len() < 20 {
        assert!(Instant::now() < deadline, "the last process got no job");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut victim = hosts.pop().unwrap();
    victim.proc.kill();
    (victim.pid, victim.jobs())
}

#[test]
fn one_per_service_handlers_run_once_in_the_whole_service_over_jetstream() {
    let server = NatsServer::start(&[]);
    jobs_run_once(three_processes(&config(&server.url(), "")), 0, 2);
}

#[test]
fn a_process_killed_mid_job_loses_none_of_its_one_per_service_events() {
    let server = NatsServer::start(&[]);
    let mut hosts = three_processes(&config(&server.url(), "ack_wait_s = 2"));
    let sender = hosts[0].pid;
    let (_, killed) = kill_the_last_mid_jobs(&mut hosts, 0);
    let refs: Vec<&Host> = hosts.iter().collect();
    let (missing, dups, per_process) = jobs_handled(&refs, &[killed], sender, 3_000);
    assert_eq!(missing, 0, "{per_process:?}");
    // Only what the victim had handled and not acknowledged when it died
    // may run twice.
    assert!(dups <= 1_024, "{dups} duplicates: {per_process:?}");
    eprintln!("killed mid-job: {dups} ran twice; per process {per_process:?}");
    for host in hosts {
        host.quit();
    }
}

#[test]
fn one_per_service_handlers_run_once_in_the_whole_service_at_most_once() {
    let server = NatsServer::start_plain(&[]);
    let mut hosts = three_processes(&amo(&server.url(), ""));
    // The queue groups are in place once every process hears an event.
    hosts[0].send("notify app.sentinel groups");
    for host in hosts.iter_mut() {
        host.expect_got("app.sentinel", "groups");
    }
    jobs_run_once(hosts, 0, 2);
}

/// Three processes of one service over IPC (no NATS): the first starts the
/// IPC server, the others join it.
fn three_over_ipc() -> Vec<Host> {
    let config = "[logging]\nlevel = \"INFO\"\n";
    let first = Host::start(config, None, &["--ipc"]);
    let second = Host::start(config, Some(&first), &["--ipc"]);
    let third = Host::start(config, Some(&first), &["--ipc"]);
    vec![first, second, third]
}

#[test]
fn one_per_service_handlers_run_once_in_the_whole_service_over_ipc() {
    jobs_run_once(three_over_ipc(), 1, 3);
}

#[test]
fn a_process_killed_mid_job_over_ipc_loses_events_and_the_loss_is_counted() {
    let mut hosts = three_over_ipc();
    let sender = hosts[1].pid;
    let (victim_pid, killed) = kill_the_last_mid_jobs(&mut hosts, 1);
    let killed = vec![killed];
    // What the server had handed to the victim and not had acknowledged is
    // lost, and the server says how much (its log is the first process's).
    let (_, line) = hosts[0]
        .proc
        .expect_stderr(0, &["queue group", &format!("pid {victim_pid}"), "lost"]);
    let lost: u64 = line
        .split("lost=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    // The survivors finish what was theirs.
    let refs: Vec<&Host> = hosts.iter().collect();
    let (missing, dups, per_process) = jobs_handled_but(&refs, &killed, sender, 3_000, lost);
    assert_eq!(dups, 0, "{per_process:?}");
    // Counted: what was handed to it and not acknowledged, the few it
    // handled and died before acknowledging included.
    assert!(
        lost >= missing && lost <= missing + 64,
        "lost={lost} missing={missing}: {line}"
    );
    eprintln!("killed over IPC: {missing} missing; per process {per_process:?}");
    for host in hosts {
        host.quit();
    }
}

#[test]
fn a_bad_nats_setting_is_a_start_up_error_naming_it() {
    for (extra, needle) in [
        ("delivery = \"bogus\"", "delivery"),
        ("ack_wait_s = 18446744073709551615", "ack_wait_s"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config("nats://127.0.0.1:1", extra)).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_nats_host"))
            .arg("--no-wait")
            .current_dir(dir.path())
            .env("SERVE_COMMON_CONFIG", &path)
            .env_remove("SERVCOM_IPC_ADDR")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{extra}: {stderr}");
        assert!(stderr.contains(needle), "{extra}: {stderr}");
    }
}
