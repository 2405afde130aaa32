//! The IPC server and group sockets: real processes, real SEQPACKET
//! sockets, real signals. Every wait is on a line a helper printed.
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;
use serve_common::ipc::{self, IpcError};
use serve_common_tests::ipc_support::{Msg, exchange, pattern};
use serve_common_tests::{Proc, process_gone};

const HELPER: &str = env!("CARGO_BIN_EXE_ipc_helper");

fn shared_server() -> &'static str {
    serve_common_tests::ipc_support::shared_server(HELPER)
}

fn helper(address: &str, args: &[&str]) -> Proc {
    let mut command = Command::new(HELPER);
    command.args(args).env(ipc::ADDR_ENV, address);
    Proc::spawn(&mut command, false)
}

fn parent(flags: &[&str]) -> (Proc, u32, String) {
    serve_common_tests::ipc_support::parent(HELPER, flags)
}

use serve_common_tests::ipc_support::stop;

#[test]
fn three_processes_exchange_every_message_once_in_order() {
    let address = shared_server();
    let socket = ipc::join_group::<Msg>("exchange").unwrap();
    let count = 500;
    let mut members: Vec<Proc> = (0..2)
        .map(|_| helper(address, &["exchange", "exchange", "500", "2"]))
        .collect();
    for member in &mut members {
        member.expect("joined");
    }
    for member in &mut members {
        member.send("go");
    }
    exchange(&socket, std::process::id(), count, 2);
    for member in &mut members {
        member.expect("ok 1000");
    }
}

#[test]
fn a_stalled_member_is_cut_off_and_the_others_lose_nothing() {
    let (server, _, address) = parent(&["--stall-ms", "1000"]);
    let mut stalled = helper(&address, &["stall", "flood"]);
    stalled.expect("joined");
    let mut reader = helper(&address, &["read", "flood", "2000"]);
    reader.expect("joined");
    let mut flooder = helper(&address, &["big", "flood", "1", "2000", "1024"]);
    flooder.expect("joined");
    flooder.send("go");
    flooder.expect("sent");
    reader.expect("ok 2000");
    let pid = format!("(pid {})", stalled.pid());
    server.expect_stderr(0, &["cutting off member", &pid, "read nothing for 1s"]);
    stalled.send("drain");
    let closed = stalled.expect("closed after ");
    let got: u64 = closed.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(got < 2000, "the stalled member was not cut off: {closed}");
    flooder.send("exit");
    stop(server);
}

#[test]
fn concurrent_multi_megabyte_messages_arrive_whole() {
    let address = shared_server();
    let socket = ipc::join_group::<Msg>("big5").unwrap();
    let size = 5 << 20;
    let mut senders: Vec<Proc> = (1..=2)
        .map(|id| {
            helper(
                address,
                &["big", "big5", &id.to_string(), "3", &size.to_string()],
            )
        })
        .collect();
    for sender in &mut senders {
        sender.expect("joined");
    }
    for sender in &mut senders {
        sender.send("go");
    }
    let mut next = [0_u64; 3];
    for _ in 0..6 {
        let msg = socket.recv().unwrap();
        assert_eq!(msg.body.len(), size);
        assert_eq!(msg.seq, next[msg.from as usize]);
        assert!(
            msg.body == pattern(msg.from, msg.seq, size),
            "message {} of {} was garbled",
            msg.seq,
            msg.from
        );
        next[msg.from as usize] += 1;
    }
    for sender in &mut senders {
        sender.expect("sent");
        sender.send("exit");
    }
}

fn raw_connect(address: &str) -> std::os::fd::OwnedFd {
    serve_common_tests::ipc_support::raw_connect(address).unwrap()
}

fn raw_send(fd: &std::os::fd::OwnedFd, packet: &[u8]) {
    use nix::sys::socket::{self, MsgFlags};
    socket::send(
        std::os::fd::AsRawFd::as_raw_fd(fd),
        packet,
        MsgFlags::MSG_NOSIGNAL,
    )
    .unwrap();
}

/// The greeting's CBOR, written independently of the library.
#[derive(Serialize)]
enum Greeting {
    Join { group: String },
}

fn whole(message: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x01];
    packet.extend_from_slice(message);
    packet
}

fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

#[test]
fn silent_connections_delay_no_one_and_are_closed_after_the_deadline() {
    let address = shared_server();
    let silent: Vec<_> = (0..3).map(|_| raw_connect(address)).collect();
    let started = Instant::now();
    let a = ipc::join_group::<String>("after-silence").unwrap();
    let b = ipc::join_group::<String>("after-silence").unwrap();
    // `b` is in the group once a message from it arrives: a handshake.
    b.send(&"hello".to_owned()).unwrap();
    assert_eq!(a.recv().unwrap(), "hello");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    // The silent ones are closed after the 2 s greeting deadline.
    let mut buffer = [0_u8; 16];
    for fd in &silent {
        let timeout = nix::sys::time::TimeVal::new(10, 0);
        nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .unwrap();
        let read = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            &mut buffer,
            nix::sys::socket::MsgFlags::empty(),
        );
        assert_eq!(read.ok(), Some(0), "closed by the server");
    }
}

#[test]
fn garbage_frames_are_dropped_and_the_server_goes_on() {
    let address = shared_server();
    let member = ipc::join_group::<String>("garbage").unwrap();
    let raw = raw_connect(address);
    raw_send(
        &raw,
        &whole(&cbor(&Greeting::Join {
            group: "garbage".into(),
        })),
    );
    for packet in [
        &[0x09, 1, 2][..],                  // unknown tag
        &[0x03, 5],                         // continuation without a start
        &[0x02, 1],                         // truncated length
        &[0x02, 0xff, 0xff, 0xff, 0x7f, 1], // announces 2 GiB
        &[0x02, 10, 0, 0, 0, 1, 2],         // a start...
        &[0x01, 0xf6],                      // ...interrupted by a whole one, kept
    ] {
        raw_send(&raw, packet);
    }
    // Valid framing, but not a String: the receiver's error, not a crash.
    raw_send(&raw, &whole(&cbor(&Option::<u8>::None)));
    raw_send(&raw, &whole(&cbor(&"after garbage")));
    // The interrupting null and the explicit one.
    assert!(matches!(member.recv(), Err(IpcError::Decode(_))));
    assert!(matches!(member.recv(), Err(IpcError::Decode(_))));
    assert_eq!(member.recv().unwrap(), "after garbage");
    // Still serving.
    let other = ipc::join_group::<String>("garbage").unwrap();
    other.send(&"still up".into()).unwrap();
    assert_eq!(member.recv().unwrap(), "still up");
}

#[test]
fn an_oversize_message_is_a_clear_error_and_the_socket_stays_usable() {
    shared_server();
    let a = ipc::join_group::<String>("oversize").unwrap();
    let b = ipc::join_group::<String>("oversize").unwrap();
    let error = a
        .send_bytes(&vec![0; ipc::DEFAULT_MAX_MESSAGE + 1])
        .unwrap_err();
    assert!(matches!(error, IpcError::TooLarge(_)));
    assert!(
        error
            .to_string()
            .contains(&ipc::DEFAULT_MAX_MESSAGE.to_string()),
        "{error}"
    );
    a.send(&"fits".into()).unwrap();
    assert_eq!(b.recv().unwrap(), "fits");
}

#[test]
fn other_users_are_refused_and_logged() {
    if !nix::unistd::getuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root"
        );
        return;
    }
    let (server, server_pid, address) = parent(&[]);
    let threads = || {
        std::fs::read_dir(format!("/proc/{server_pid}/task"))
            .unwrap()
            .count()
    };
    let before = threads();
    // `nobody` needs a copy of the helper it can read and run.
    let dir = tempfile::Builder::new()
        .prefix("ipc-nobody")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("ipc_helper");
    std::fs::copy(HELPER, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = Command::new(&copy);
    std::os::unix::process::CommandExt::uid(&mut command, 65534);
    std::os::unix::process::CommandExt::gid(&mut command, 65534);
    command
        .args(["try-join", "secret"])
        .env(ipc::ADDR_ENV, &address);
    let mut intruder = Proc::spawn(&mut command, false);
    intruder.expect("refused");
    // The server's side of it (the intruder also checks the server's uid).
    let (_, refused) =
        server.expect_stderr(0, &["refused a connection from another user (uid 65534"]);
    // Refused by the accept loop itself: no thread was started for it.
    assert!(refused.contains(" main "), "{refused}");
    assert_eq!(threads(), before, "a refused connection left a thread");
    stop(server);
}

#[test]
fn killing_the_parent_takes_the_server_down_within_a_second() {
    let (mut parent, server_pid, _) = parent(&[]);
    parent.kill();
    let deadline = Instant::now() + Duration::from_secs(1);
    while !process_gone(server_pid) {
        assert!(
            Instant::now() < deadline,
            "server {server_pid} outlived its parent by 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigint_to_the_process_group_leaves_the_server_to_its_parent() {
    let mut command = Command::new(HELPER);
    command.arg("parent").env_remove(ipc::ADDR_ENV);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut parent = Proc::spawn(&mut command, true);
    let line = parent.expect("server ");
    let server_pid: u32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let group = nix::unistd::Pid::from_raw(parent.pid() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).unwrap();
    parent.expect("alive-at-sigint");
    parent.expect("stopped");
    let (status, log) = parent.finish();
    assert!(status.success(), "{log}");
    assert!(
        process_gone(server_pid),
        "the parent's shutdown stopped the server"
    );
}

#[test]
fn async_sockets_talk_to_blocking_ones_and_recv_is_cancellation_safe() {
    shared_server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let a = ipc::join_group_async::<Msg>("async").await.unwrap();
        let b = ipc::join_group::<Msg>("async").unwrap();
        // A recv that is dropped before anything arrives loses nothing.
        let early = tokio::time::timeout(Duration::from_millis(20), a.recv()).await;
        assert!(early.is_err());
        let body = pattern(9, 0, 200_000); // several packets
        b.send(&Msg {
            from: 9,
            seq: 0,
            body: body.clone(),
        })
        .unwrap();
        let got = a.recv().await.unwrap();
        assert_eq!((got.from, got.body == body), (9, true));
        a.send(&Msg {
            from: 1,
            seq: 1,
            body: vec![1],
        })
        .await
        .unwrap();
        assert_eq!(b.recv().unwrap().seq, 1);
    });
}

#[test]
fn the_servers_size_limit_is_every_members_limit() {
    let (server, _, address) = parent(&["--max", "1000"]);
    let mut command = Command::new(HELPER);
    command
        .args(["big", "small", "1", "1", "2000"])
        .env(ipc::ADDR_ENV, &address);
    let mut sender = Proc::spawn(&mut command, true);
    sender.expect("joined");
    sender.send("go");
    let (status, stderr) = sender.finish();
    assert!(!status.success());
    assert!(
        stderr.contains("TooLarge") && stderr.contains("max: 1000"),
        "{stderr}"
    );
    stop(server);
}
