//! `bash bench/ipc.sh`: messages and events through the IPC server between
//! two processes, against a raw SOCK_SEQPACKET connection between the same
//! two processes, alternating (`IPC_BENCH_ROUNDS`, default 5) inside one
//! run and reporting medians; then how long the group takes to heal after
//! `kill -9` of the server, and the longest gap a live member sees while
//! another member stalls. This executable is also the server and the peers.

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
const KILLS: usize = 10;
const STALL_MESSAGES: u64 = 10_000;
const STALL_SIZE: usize = 1024;

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

fn output(mut child: Child) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
    assert!(child.wait().unwrap().success());
    text
}

/// The peers: each sends `MESSAGES`, then echoes `TRIPS` pings, over a raw
/// connection or through the server; and the other roles' processes.
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
        // Answers every probe with the time it ran here; stays until killed.
        "heal" => {
            ipc::setup(None).unwrap();
            event::bus()
                .on("bench.probe")
                .call_data(|round: &u64| event::notify("bench.probe.ack", (*round, monotonic_ns())))
                .unwrap();
            event::enable_ipc().unwrap();
            event::notify("bench.heal.ready", ());
            loop {
                std::thread::park();
            }
        }
        "stall" => stalled_group(),
        "stuck" => {
            ipc::setup(None).unwrap();
            let _group = ipc::join_group::<()>("stall").unwrap();
            println!("joined");
            loop {
                std::thread::park();
            }
        }
        "live" => {
            ipc::setup(None).unwrap();
            let group = ipc::join_group::<()>("stall").unwrap();
            println!("joined");
            let mut longest = Duration::ZERO;
            let mut last = None::<Instant>;
            for _ in 0..STALL_MESSAGES {
                group.recv_bytes().unwrap();
                let now = Instant::now();
                if let Some(last) = last {
                    longest = longest.max(now - last);
                }
                last = Some(now);
            }
            println!("{}", longest.as_secs_f64() * 1e3);
        }
        other => panic!("unknown role {other}"),
    }
}

/// One process with its own server (a 4 MiB queue per member): a stuck
/// member that never reads, two live ones, and this process sending
/// `STALL_MESSAGES`; prints the longest gap a live member saw, in ms.
fn stalled_group() {
    ipc::start_with(ipc::ServerOptions {
        queue_bytes: 4 << 20,
        ..ipc::ServerOptions::default()
    })
    .unwrap();
    let group = ipc::join_group::<()>("stall").unwrap();
    let mut stuck = peer("stuck");
    let wait_joined = |child: &mut Child| {
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "joined");
    };
    wait_joined(&mut stuck);
    let mut live: Vec<Child> = (0..2).map(|_| peer("live")).collect();
    for child in &mut live {
        wait_joined(child);
    }
    let message = vec![7_u8; STALL_SIZE];
    for _ in 0..STALL_MESSAGES {
        group.send_bytes(&message).unwrap();
    }
    let gaps: Vec<f64> = live
        .into_iter()
        .map(|child| output(child).trim().parse().unwrap())
        .collect();
    let _ = stuck.kill();
    let _ = stuck.wait();
    ipc::shutdown().unwrap();
    println!("{}", gaps.into_iter().fold(0.0, f64::max));
}

/// Raw pair: (messages per second, median round trip in µs).
fn measure_raw(listener: &OwnedFd) -> (f64, f64) {
    let mut raw_peer = peer("raw");
    let fd = socket::accept4(std::os::fd::AsFd::as_fd(listener), SockFlag::SOCK_CLOEXEC).unwrap();
    let mut buffer = [0_u8; 64];
    raw_recv(&fd, &mut buffer);
    let start = Instant::now();
    for _ in 1..MESSAGES {
        raw_recv(&fd, &mut buffer);
    }
    let throughput = (MESSAGES - 1) as f64 / start.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(TRIPS);
    for _ in 0..TRIPS {
        let start = Instant::now();
        raw_send(&fd, &[1_u8; SIZE]);
        raw_recv(&fd, &mut buffer);
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    raw_peer.wait().unwrap();
    (throughput, median(samples))
}

/// Through the server: (messages per second, median round trip in µs).
fn measure_ipc() -> (f64, f64) {
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
    ipc_peer.wait().unwrap();
    group.close();
    (throughput, median(samples))
}

/// Milliseconds from `kill -9` of the server until an event from this
/// process runs in the peer again, for each of `KILLS` kills.
fn measure_heal() -> Vec<f64> {
    let (acks, acked) = std::sync::mpsc::channel::<(u64, u64)>();
    let acks = parking_lot::Mutex::new(acks);
    event::bus()
        .on("bench.probe.ack")
        .call_data(move |ack: &(u64, u64)| {
            let _ = acks.lock().send(*ack);
        })
        .unwrap();
    let ready = event::wait_for("bench.heal.ready").unwrap();
    let mut heal_peer = peer("heal");
    ready.wait(Duration::from_secs(30)).unwrap();
    let mut heals = Vec::with_capacity(KILLS);
    for round in 0..KILLS as u64 {
        // The keeper restarts at once a server that ran for a second.
        std::thread::sleep(Duration::from_millis(1100));
        let pid = ipc::server_pid().expect("the server is up");
        let killed = monotonic_ns();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let ran_at = 'probe: loop {
            event::notify("bench.probe", round);
            let deadline = Instant::now() + Duration::from_millis(5);
            while let Ok((acked_round, at)) =
                acked.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                if acked_round == round {
                    break 'probe at;
                }
            }
        };
        heals.push(ran_at.saturating_sub(killed) as f64 / 1e6);
    }
    let _ = heal_peer.kill();
    let _ = heal_peer.wait();
    heals
}

fn main() {
    ipc::run_server_if_requested();
    if let Ok(role) = std::env::var("BENCH_ROLE") {
        return run_peer(&role);
    }
    let rounds: usize = std::env::var("IPC_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(3);

    // Raw: a connected SEQPACKET pair between this process and a peer.
    let name = format!("serve-common-bench-{}", std::process::id());
    let listener = raw_socket();
    socket::bind(
        listener.as_raw_fd(),
        &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
    )
    .unwrap();
    socket::listen(&listener, socket::Backlog::new(8).unwrap()).unwrap();
    std::env::set_var("BENCH_RAW", &name);
    ipc::prepare();
    ipc::start().unwrap();

    // Ours and the baseline, alternating.
    let (mut throughput, mut raw_throughput) = (Vec::new(), Vec::new());
    let (mut round_trip, mut raw_round_trip) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (t, rt) = measure_raw(&listener);
        raw_throughput.push(t);
        raw_round_trip.push(rt);
        let (t, rt) = measure_ipc();
        throughput.push(t);
        round_trip.push(rt);
    }
    println!("# raw round trips (µs): {raw_round_trip:.1?}; ours: {round_trip:.1?}");
    println!("# raw throughputs (/s): {raw_throughput:.0?}; ours: {throughput:.0?}");

    // Events: notify here, the handler runs there; one-way, on the shared
    // monotonic clock.
    event::enable_ipc().unwrap();
    let ready = event::wait_for("bench.ready").unwrap();
    let events_peer = peer("events");
    ready.wait(Duration::from_secs(30)).unwrap();
    for _ in 0..EVENTS {
        event::notify("bench.event", monotonic_ns());
        // One at a time: latency, not queueing.
        std::thread::sleep(Duration::from_micros(200));
    }
    let event_us: f64 = output(events_peer).trim().parse().unwrap();

    let heals = measure_heal();
    println!("# heals (ms): {heals:.1?}");
    let gap: f64 = output(peer("stall")).trim().parse().unwrap();
    ipc::shutdown().unwrap();

    let line = |metric: &str, value: f64, baseline: f64| {
        println!(
            "{metric}: {value:.2} baseline: {baseline:.2} ratio: {:.3}",
            value / baseline
        );
    };
    let round_trip = median(round_trip);
    line(
        "ipc_throughput_per_s",
        median(throughput),
        median(raw_throughput),
    );
    line("ipc_round_trip_us", round_trip, median(raw_round_trip));
    line("ipc_event_us", event_us, round_trip);
    println!("ipc_heal_ms: {:.2} baseline: - ratio: -", median(heals));
    println!("ipc_stalled_group_gap_ms: {gap:.2} baseline: - ratio: -");
}
