//! IPC under faults: the server killed mid-stream, a member that stalls,
//! members that misbehave. Real processes and sockets; every wait is on a
//! line a process printed or logged.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serve_common::ipc;
use serve_common_tests::Proc;
use serve_common_tests::ipc_support::{Members, events_members, stop};

const HELPER: &str = env!("CARGO_BIN_EXE_ipc_helper");

fn parent(flags: &[&str]) -> (Proc, u32, String) {
    serve_common_tests::ipc_support::parent(HELPER, flags)
}

/// Events processes of one service on the server at `address`, with one
/// config file (`[events.ipc]` sets their links' options).
fn members(address: &str, count: usize, config: &str) -> Members {
    let plain: &[&str] = &[];
    events_members(HELPER, address, &vec![plain; count], config, true)
}

/// Parses `0-4,7` back into numbers.
fn parse_ranges(text: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    if text == "-" {
        return out;
    }
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u64>().unwrap()..=b.parse().unwrap()),
            None => {
                out.insert(part.parse().unwrap());
            }
        }
    }
    out
}

/// A `key=value` field of a report line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn signal(process: &Proc, signal: Signal) {
    kill(Pid::from_raw(process.pid() as i32), signal).unwrap();
}

/// Whether `/proc` still lists `pid` (a zombie counts: it was not reaped).
fn listed(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn the_group_heals_after_the_server_is_killed_mid_stream() {
    let (parent, server_pid, address) = parent(&[]);
    // A small outgoing buffer, so the outage is likely to overflow it.
    let mut service = members(
        &address,
        3,
        "[s]\nv = 1\nw = 2\n[events.ipc]\nbuffer_events = 200\n",
    );
    let total = 10_000_u64;
    for receiver in &mut service.processes[1..] {
        receiver.send(&format!("watch {}", total / 4));
    }
    service.processes[0].send(&format!("stream {total} 100"));
    service.processes[1].expect("reached ");

    // kill -9 the server mid-stream.
    let killed = Instant::now();
    kill(Pid::from_raw(server_pid as i32), Signal::SIGKILL).unwrap();
    // A runtime set made while the link is down (most likely: the first
    // reconnection waits for the new server).
    service.processes[2].expect("lost");
    service.processes[2].send("set s.v 7");
    // The sender's own buffer fills during the outage; a set it makes then
    // still gets out: the config's events are never dropped for room.
    service.processes[0].expect("lost");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        service.processes[0].send("stats");
        let stats = service.processes[0].expect("stats ");
        if field(&stats, "dropped_outgoing") != "0" || field(&stats, "up") == "true" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the buffer never filled: {stats}"
        );
    }
    service.processes[0].send("set s.w 8");
    let (_, restarted) = parent.expect_stderr(0, &["IPC server restarted (pid"]);
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "the server took {:?} to come back: {restarted}",
        killed.elapsed()
    );
    for member in &mut service.processes {
        let rejoined = member.expect_seen("rejoined ");
        let down: u64 = field(&rejoined, "down_ms").parse().unwrap();
        assert!(down < 1000, "{rejoined}");
        assert_ne!(field(&rejoined, "server"), server_pid.to_string());
    }
    assert!(!listed(server_pid), "the dead server was reaped");

    service.processes[0].expect("streamed");
    // The set reached every process after the outage.
    for member in &mut service.processes {
        member.expect_line("handled config:s.v 7");
        member.expect_line("handled config:s.w 8");
        member.send("get s.v");
        assert_eq!(member.expect("value "), "value 7");
        member.send("get s.w");
        assert_eq!(member.expect("value "), "value 8");
    }
    // Everything the sender notified is in by now: the sender's stream
    // is followed by a barrier event, after every `fault.seq`.
    service.processes[0].send("notify test.barrier 1");
    service.processes[0].send("report");
    let sender = service.processes[0].expect("report ");
    let before = parse_ranges(field(&sender, "before"));
    let buffered = parse_ranges(field(&sender, "buffered"));
    let dropped = parse_ranges(field(&sender, "dropped"));
    let after = parse_ranges(field(&sender, "after"));
    // The config's own events (the rejoin's sync request, the answers to
    // the others') are never dropped for want of room.
    assert_eq!(field(&sender, "config_dropped"), "0", "{sender}");
    let config_buffered: usize = field(&sender, "config_buffered").parse().unwrap();
    assert_eq!(
        (before.len() + buffered.len() + dropped.len() + after.len()) as u64,
        total,
        "every event is in one class: {sender}"
    );
    assert!(!after.is_empty(), "{sender}");
    for receiver in &mut service.processes[1..] {
        receiver.expect("handled test.barrier 1");
        receiver.send("report");
        let report = receiver.expect("report ");
        let received = parse_ranges(field(&report, "received"));
        assert_eq!(field(&report, "copies"), "0", "exactly once: {report}");
        let missing_after: Vec<_> = after.difference(&received).collect();
        assert!(
            missing_after.is_empty(),
            "events notified after the rejoin all arrive; missing {missing_after:?}"
        );
        // Buffered during the outage: delivered once, or counted as dropped.
        assert!(
            buffered.is_subset(&received),
            "buffered events missing: {:?}",
            buffered.difference(&received).collect::<Vec<_>>()
        );
        assert!(dropped.is_disjoint(&received), "a dropped event arrived");
        let in_flight = before.difference(&received).count();
        assert!(
            in_flight < 1000,
            "{in_flight} events lost in flight at the kill: {report}"
        );
    }
    // The sender's counters agree with its classes.
    service.processes[0].send("stats");
    let stats = service.processes[0].expect("stats ");
    assert_eq!(
        field(&stats, "buffered"),
        (buffered.len() + config_buffered).to_string(),
        "{stats}"
    );
    assert_eq!(
        field(&stats, "dropped_outgoing"),
        dropped.len().to_string(),
        "{stats}"
    );
    if !dropped.is_empty() {
        service.processes[0].expect_stderr(0, &["WARN", "outgoing buffer full"]);
    }
    let log = stop(parent);
    assert!(
        log.contains(&format!("IPC server (pid {server_pid}) exited")),
        "{log}"
    );
}

#[test]
fn a_stalled_member_is_cut_off_without_stalling_the_others_and_rejoins() {
    let (parent, _, address) = parent(&["--stall-ms", "2000"]);
    let mut service = members(&address, 2, "");
    let group = serve_common::event::EVENTS_GROUP;
    let mut live: Vec<Proc> = (0..2)
        .map(|_| {
            let mut command = Command::new(HELPER);
            command
                .args(["gaps", group, "10000"])
                .env(ipc::ADDR_ENV, &address);
            let mut process = Proc::spawn(&mut command, false);
            process.expect("joined");
            process
        })
        .collect();
    // The stalled member: stopped, it reads nothing.
    signal(&service.processes[1], Signal::SIGSTOP);
    service.processes[0].send("stream 10000 0");
    for reader in &mut live {
        let line = reader.expect("gaps ");
        let gap: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(gap <= 100.0, "a live member waited: {line}");
    }
    let stalled_pid = service.processes[1].pid().to_string();
    parent.expect_stderr(0, &["cutting off member", &format!("(pid {stalled_pid})")]);
    // Running again, it finds itself cut off and rejoins.
    signal(&service.processes[1], Signal::SIGCONT);
    let rejoined = service.processes[1].expect("rejoined ");
    let missed: u64 = field(&rejoined, "missed").parse().unwrap();
    // What it read before the cut-off and what the server discarded for
    // it are the whole stream (which ended well before the cut-off).
    service.processes[1].send("report");
    let report = service.processes[1].expect("report ");
    let received = parse_ranges(field(&report, "received")).len() as u64;
    assert!(missed > 0, "{rejoined}");
    assert_eq!(received + missed, 10_000, "{rejoined}; {report}");
    service.processes[1].expect_stderr(0, &["WARN", "cut this process off"]);
    service.processes[0].send("notify test.after 1");
    service.processes[1].expect("handled test.after 1");
    stop(parent);
}

#[test]
fn events_wait_in_a_bounded_buffer_while_no_server_comes_back_and_health_says_so() {
    let (mut parent, _, address) = parent(&[]);
    let mut service = members(
        &address,
        1,
        "[events.ipc]\nbuffer_events = 300\nhealth_grace_ms = 200\n",
    );
    let member = &mut service.processes[0];
    member.send("health");
    member.expect("health ok");
    // The parent dies with its server: nobody restarts it.
    parent.kill();
    member.expect("lost");
    for i in 0..500 {
        member.send(&format!("notify test.n {i}"));
    }
    member.send("ping 1");
    member.expect("pong 1");
    member.send("stats");
    let stats = member.expect("stats ");
    assert_eq!(field(&stats, "up"), "false", "{stats}");
    assert_eq!(field(&stats, "buffered"), "300", "{stats}");
    assert_eq!(field(&stats, "dropped_outgoing"), "200", "{stats}");
    member.expect_stderr(0, &["WARN", "outgoing buffer full"]);
    member.expect_stderr(0, &["WARN", "IPC link lost"]);
    // Past the grace period the health check fails.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        member.send("health");
        let health = member.expect("health ");
        if health.starts_with("health err") {
            assert!(health.contains("300 waiting"), "{health}");
            break;
        }
        assert!(Instant::now() < deadline, "health never failed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_greeting_trickled_byte_by_byte_is_cut_at_the_deadline() {
    let (parent, _, address) = parent(&["--greeting-ms", "500"]);
    let fd = serve_common_tests::ipc_support::raw_connect(&address).unwrap();
    let send = |packet: &[u8]| {
        nix::sys::socket::send(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            packet,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )
    };
    let started = Instant::now();
    // A greeting announced as 100 bytes, sent one byte every 100 ms: each
    // packet comes well within the deadline, the whole never does.
    send(&[0x02, 100, 0, 0, 0, 0xa1]).unwrap();
    let closed_after = loop {
        std::thread::sleep(Duration::from_millis(100));
        if send(&[0x03, 0]).is_err() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still open after 5 s of trickling"
        );
    };
    assert!(
        closed_after < Duration::from_millis(1500),
        "closed after {closed_after:?}"
    );
    let log = stop(parent);
    assert!(log.contains("no complete greeting in time"), "{log}");
}

#[test]
fn a_join_that_gets_no_welcome_times_out() {
    // A listener that accepts nothing and answers nothing.
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
    let name = format!("serve-common-test-mute-{}", std::process::id());
    let listener = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
    )
    .unwrap();
    socket::listen(&listener, socket::Backlog::new(8).unwrap()).unwrap();
    use base64::Engine as _;
    let address = base64::engine::general_purpose::STANDARD.encode(&name);
    let started = Instant::now();
    let mut command = Command::new(HELPER);
    command
        .args(["try-join", "mute"])
        .env(ipc::ADDR_ENV, &address);
    let mut joiner = Proc::spawn(&mut command, false);
    let line = joiner.expect("error ");
    assert!(line.contains("did not answer within 5s"), "{line}");
    let took = started.elapsed();
    assert!(
        took >= ipc::JOIN_TIMEOUT && took < ipc::JOIN_TIMEOUT * 3,
        "{took:?}"
    );
}

#[test]
fn try_notify_refuses_an_event_over_the_ipc_limit() {
    let (parent, _, address) = parent(&["--max", "1000"]);
    let mut service = members(&address, 2, "");
    let member = &mut service.processes[0];
    member.send("try-notify-big 2000");
    let refused = member.expect("try-notify ");
    assert!(
        refused.starts_with("try-notify err") && refused.contains("limit of 1000 bytes"),
        "{refused}"
    );
    member.send("try-notify-big 100");
    assert_eq!(member.expect("try-notify "), "try-notify ok");
    service.processes[1].expect("handled big.try");
    stop(parent);
}

#[test]
fn the_incoming_backlog_is_bounded_in_bytes() {
    let (parent, _, address) = parent(&[]);
    let mut service = members(&address, 2, "[events.ipc]\nincoming_bytes = 200000\n");
    // The receiver's handlers are stuck: its bus falls behind.
    service.processes[1].send("block");
    service.processes[1].expect("blocked");
    for _ in 0..50 {
        service.processes[0].send("notify-big big.one 10000");
    }
    service.processes[1].send("wait-received 50");
    assert_eq!(service.processes[1].expect("received "), "received 50");
    service.processes[1].send("stats");
    let stats = service.processes[1].expect("stats ");
    let dropped: u64 = field(&stats, "dropped_incoming").parse().unwrap();
    let backlog: usize = field(&stats, "backlog_bytes").parse().unwrap();
    assert!(backlog <= 200_000 && (25..50).contains(&dropped), "{stats}");
    service.processes[1].expect_stderr(0, &["WARN", "too far behind"]);
    // Unstuck, it handles what it kept, and nothing is lost silently.
    service.processes[1].send("unblock");
    service.processes[1].send("ping 1");
    service.processes[1].expect("pong 1");
    let handled = service.processes[1]
        .seen()
        .iter()
        .filter(|l| l.as_str() == "handled big.one")
        .count() as u64;
    assert_eq!(handled + dropped, 50, "{stats}");
    stop(parent);
}

#[test]
fn a_shutdown_lets_members_read_what_is_queued_for_them() {
    let (mut parent, _, address) = parent(&[]);
    let spawn = |args: &[&str]| {
        let mut command = Command::new(HELPER);
        command.args(args).env(ipc::ADDR_ENV, &address);
        Proc::spawn(&mut command, false)
    };
    let mut slow = spawn(&["stall", "drained"]);
    slow.expect("joined");
    let mut sender = spawn(&["big", "drained", "1", "2000", "1024"]);
    sender.expect("joined");
    sender.send("go");
    sender.expect("sent");
    // Most of the 2 MB waits in the server's queue for the slow reader.
    parent.send("shutdown");
    slow.send("drain");
    assert_eq!(slow.expect("closed after "), "closed after 2000");
    parent.expect("stopped");
    sender.send("exit");
    let (status, log) = parent.finish();
    assert!(status.success(), "{log}");
    assert!(!log.contains("did not read in time"), "{log}");
}
