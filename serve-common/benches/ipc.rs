//! `bash bench/ipc.sh`: messages and events through the IPC server between
//! two processes, against a raw SOCK_SEQPACKET connection between the same
//! two processes, same run. This executable is also the server and the peer.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use serve_common::event;
use serve_common::ipc;

const MESSAGES: u64 = 200_000;
const TRIPS: usize = 20_000;
const EVENTS: usize = 5_000;
const SIZE: usize = 32;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

fn raw_socket() -> OwnedFd {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap()
}

fn raw_send(fd: &OwnedFd, data: &[u8]) {
    socket::send(fd.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL).unwrap();
}

fn raw_recv(fd: &OwnedFd, buffer: &mut [u8]) -> usize {
    socket::recv(fd.as_raw_fd(), buffer, MsgFlags::empty()).unwrap()
}

fn peer(role: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env("BENCH_ROLE", role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The peer: sends `MESSAGES`, then echoes `TRIPS` pings; over a raw
/// connection or through the server.
fn run_peer(role: &str) {
    match role {
        "raw" => {
            let name = std::env::var("BENCH_RAW").unwrap();
            let fd = raw_socket();
            socket::connect(
                fd.as_raw_fd(),
                &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
            )
            .unwrap();
            let message = [7_u8; SIZE];
            for _ in 0..MESSAGES {
                raw_send(&fd, &message);
            }
            let mut buffer = [0_u8; 64];
            for _ in 0..TRIPS {
                let n = raw_recv(&fd, &mut buffer);
                raw_send(&fd, &buffer[..n]);
            }
        }
        "ipc" => {
            ipc::setup(None).unwrap();
            let group = ipc::join_group::<()>("bench").unwrap();
            group.send_bytes(b"ready").unwrap();
            let message = [7_u8; SIZE];
            for _ in 0..MESSAGES {
                group.send_bytes(&message).unwrap();
            }
            for _ in 0..TRIPS {
                let ping = group.recv_bytes().unwrap();
                group.send_bytes(&ping).unwrap();
            }
        }
        "events" => {
            ipc::setup(None).unwrap();
            let latencies = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(EVENTS)));
            let seen = latencies.clone();
            let done = Arc::new(AtomicU64::new(0));
            let counter = done.clone();
            let main = std::thread::current();
            event::bus()
                .on("bench.event")
                .call_data(move |sent_ns: &u64| {
                    seen.lock().push((monotonic_ns() - sent_ns) as f64 / 1e3);
                    if counter.fetch_add(1, Ordering::AcqRel) + 1 == EVENTS as u64 {
                        main.unpark();
                    }
                })
                .unwrap();
            event::enable_ipc().unwrap();
            event::notify("bench.ready", ());
            while done.load(Ordering::Acquire) < EVENTS as u64 {
                std::thread::park();
            }
            let median = median(latencies.lock().clone());
            println!("{median}");
        }
        other => panic!("unknown role {other}"),
    }
}

fn main() {
    ipc::run_server_if_requested();
    if let Ok(role) = std::env::var("BENCH_ROLE") {
        return run_peer(&role);
    }

    // Raw: a connected SEQPACKET pair between this process and the peer.
    let name = format!("serve-common-bench-{}", std::process::id());
    let listener = raw_socket();
    socket::bind(
        listener.as_raw_fd(),
        &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
    )
    .unwrap();
    socket::listen(&listener, socket::Backlog::new(8).unwrap()).unwrap();
    std::env::set_var("BENCH_RAW", &name);
    let mut raw_peer = peer("raw");
    let fd = socket::accept4(std::os::fd::AsFd::as_fd(&listener), SockFlag::SOCK_CLOEXEC).unwrap();
    let mut buffer = [0_u8; 64];
    raw_recv(&fd, &mut buffer);
    let start = Instant::now();
    for _ in 1..MESSAGES {
        raw_recv(&fd, &mut buffer);
    }
    let raw_throughput = (MESSAGES - 1) as f64 / start.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(TRIPS);
    for _ in 0..TRIPS {
        let start = Instant::now();
        raw_send(&fd, &[1_u8; SIZE]);
        raw_recv(&fd, &mut buffer);
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let raw_round_trip = median(samples);
    raw_peer.wait().unwrap();

    // Through the server.
    ipc::start().unwrap();
    let group = ipc::join_group::<()>("bench").unwrap();
    let mut ipc_peer = peer("ipc");
    assert_eq!(group.recv_bytes().unwrap(), b"ready");
    group.recv_bytes().unwrap();
    let start = Instant::now();
    for _ in 1..MESSAGES {
        group.recv_bytes().unwrap();
    }
    let throughput = (MESSAGES - 1) as f64 / start.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(TRIPS);
    for _ in 0..TRIPS {
        let start = Instant::now();
        group.send_bytes(&[1_u8; SIZE]).unwrap();
        group.recv_bytes().unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let round_trip = median(samples);
    ipc_peer.wait().unwrap();
    group.close();

    // Events: notify here, the handler runs there; one-way, on the shared
    // monotonic clock.
    event::enable_ipc().unwrap();
    let ready = event::wait_for("bench.ready").unwrap();
    let mut events_peer = peer("events");
    ready.wait(Duration::from_secs(30)).unwrap();
    for _ in 0..EVENTS {
        event::notify("bench.event", monotonic_ns());
        // One at a time: latency, not queueing.
        std::thread::sleep(Duration::from_micros(200));
    }
    let output = std::mem::take(&mut events_peer.stdout).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut { output }, &mut text).unwrap();
    events_peer.wait().unwrap();
    let event_us: f64 = text.trim().parse().unwrap();
    ipc::shutdown().unwrap();

    let line = |metric: &str, value: f64, baseline: f64| {
        println!(
            "{metric}: {value:.2} baseline: {baseline:.2} ratio: {:.3}",
            value / baseline
        );
    };
    line("ipc_throughput_per_s", throughput, raw_throughput);
    line("ipc_round_trip_us", round_trip, raw_round_trip);
    line("ipc_event_us", event_us, round_trip);
}
