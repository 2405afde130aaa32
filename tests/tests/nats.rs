//! Events across "hosts" over real `nats-server` processes (Debian's
//! package, installed by `.ci/run`): two process groups with separate IPC
//! servers stand for two machines.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serve_common_tests::Proc;
use serve_common_tests::http_support::get;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
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
}

impl NatsServer {
    fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    fn start_on(port: u16, extra: &[&str]) -> Self {
        let monitor = free_port();
        let mut args = vec![
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-m".to_owned(),
            monitor.to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = spawn_ready(&args);
        Self {
            child,
            port,
            monitor,
            args,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again, same ports and arguments.
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
        let line = proc.expect(if args.contains(&"--no-wait") {
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

    /// Quits and returns the process's log (stderr).
    fn quit(mut self) -> String {
        self.send("quit");
        let (status, log) = self.proc.finish();
        assert!(status.success(), "{status:?}: {log}");
        log
    }
}

fn config(url: &str, extra: &str) -> String {
    format!(
        "[events.nats]\nurl = \"{url}\"\nsubject_prefix = \"test.svc\"\nmax_reconnect_delay_ms = 200\n{extra}\n[logging]\nlevel = \"INFO\"\n"
    )
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

#[test]
fn events_run_once_in_every_process_of_both_hosts_local_ones_stay_and_sets_reach_all() {
    let server = NatsServer::start(&[]);
    let config = config(&server.url(), "");
    let a1 = Host::start(&config, None, &[]);
    let a2 = Host::start(&config, Some(&a1), &[]);
    let b1 = Host::start(&config, None, &[]);
    let b2 = Host::start(&config, Some(&b1), &[]);
    assert_eq!(a1.ipc, a2.ipc);
    assert_ne!(a1.ipc, b1.ipc, "two groups, two IPC servers");
    let mut hosts = [a1, a2, b1, b2];

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
fn events_cross_a_route_between_two_cluster_nodes() {
    let (c1, c2) = (free_port(), free_port());
    let node1 = NatsServer::start(&[
        "--cluster_name",
        "svc",
        "--cluster",
        &format!("nats://127.0.0.1:{c1}"),
        "--routes",
        &format!("nats://127.0.0.1:{c2}"),
    ]);
    let node2 = NatsServer::start(&[
        "--cluster_name",
        "svc",
        "--cluster",
        &format!("nats://127.0.0.1:{c2}"),
        "--routes",
        &format!("nats://127.0.0.1:{c1}"),
    ]);
    let mut b = Host::start(&config(&node2.url(), ""), None, &[]);
    let mut a = Host::start(&config(&node1.url(), ""), None, &[]);
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
fn a_server_restart_loses_nothing_within_the_buffer_and_counts_what_exceeds_it() {
    let mut server = NatsServer::start(&[]);
    let mut receiver = Host::start(&config(&server.url(), ""), None, &[]);
    let mut sender = Host::start(&config(&server.url(), ""), None, &[]);
    let mut small = Host::start(&config(&server.url(), "buffer = 5"), None, &[]);

    for n in 0..20 {
        sender.send(&format!("notify app.before {n}"));
    }
    receiver.expect_got("app.before", "19");

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
    // Wait until both have taken all 50 (their own handlers ran), and the
    // small one's link has buffered 5 and dropped the other 45.
    sender.expect_got("app.during", "49");
    small.expect_got("app.small", "49");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !small.stats().contains(" dropped=45 ") {
        assert!(Instant::now() < deadline, "{}", small.stats());
    }

    server.restart();
    // All of them, though not necessarily in order: what one process
    // replays for another fills in behind later events.
    for n in 0..50 {
        receiver.expect_got("app.during", &n.to_string());
    }
    // The small buffer kept the first 5: the rest were dropped, counted
    // and logged.
    for n in 0..5 {
        receiver.expect_got("app.small", &n.to_string());
    }
    small.send("notify app.small-done x");
    receiver.expect_got("app.small-done", "x");
    let received_small = (0..50)
        .filter(|n| receiver.count_got("app.small", &n.to_string()) == 1)
        .count();
    assert_eq!(received_small, 5, "the buffer kept 5");
    let stats = small.stats();
    let dropped: u64 = stats
        .split_whitespace()
        .find_map(|w| w.strip_prefix("dropped="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(dropped as usize + received_small, 50, "{stats}");
    for n in 0..20 {
        assert_eq!(receiver.count_got("app.before", &n.to_string()), 1);
    }
    for n in 0..50 {
        assert_eq!(
            receiver.count_got("app.during", &n.to_string()),
            1,
            "app.during {n}"
        );
    }
    let log = small.quit();
    assert!(log.contains("buffer full"), "{log}");
    sender.quit();
    receiver.quit();
}

#[test]
fn wrong_credentials_are_a_clear_error_and_the_service_stays_up() {
    let server = NatsServer::start(&["--user", "svc", "--pass", "right"]);
    let mut host = Host::start(
        &config(&server.url(), "user = \"svc\"\npassword = \"wrong\""),
        None,
        &["--no-wait"],
    );
    let refused = host.proc.expect(&format!("nats {} nats:error", host.pid));
    assert!(refused.contains("refused the credentials"), "{refused}");
    // Local events still work.
    host.send("local app.still up");
    host.expect_got("app.still", "up");
    host.send("notify app.buffered meanwhile");
    host.expect_got("app.buffered", "meanwhile");
    let log = host.quit();
    assert!(log.contains("refused the credentials"), "{log}");
    assert!(!log.contains("wrong"), "the password is in the log: {log}");

    let mut good = Host::start(
        &config(&server.url(), "user = \"svc\"\npassword = \"right\""),
        None,
        &[],
    );
    assert!(good.stats().contains("connected=true"));
    good.quit();
}

#[test]
fn an_unreachable_server_at_start_up_then_events_flow_without_a_restart() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut early = Host::start(&config(&url, ""), None, &["--no-wait"]);
    early.send("notify app.early buffered");
    early.expect_got("app.early", "buffered");
    assert!(early.stats().contains("connected=false"));

    let _server = NatsServer::start_on(port, &[]);
    let mut late = Host::start(&config(&url, ""), None, &[]);
    // `early` connects on its own (no restart); its next event arrives.
    early.send("notify app.later flowing");
    late.expect_got("app.later", "flowing");
    let stats = early.stats();
    assert!(stats.contains("connected=true"), "{stats}");
    let sent: u64 = stats
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sent="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent >= 2, "the buffered event was sent too: {stats}");
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
