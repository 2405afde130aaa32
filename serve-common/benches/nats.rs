//! Events over NATS against bare async-nats, on one `nats-server` started
//! here (from PATH). "Host A" and "host B" are two event buses, each with
//! its own NATS connection (what two processes would have), in this
//! process so one clock times both ends.
//!
//! - `nats_event_us`: median time from `notify` on A until B's handler
//!   ran; baseline: a bare publish/subscribe round trip (A publishes, B's
//!   subscriber answers, A receives) halved.
//! - `nats_events_per_s`: events per second from A's `notify` to B's
//!   handler; baseline: bare async-nats publish of the same payloads to a
//!   subscriber on another connection.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serve_common::event::nats::{NatsOptions, CONNECTED_EVENT};
use serve_common::event::EventBus;

const ROUND_TRIPS: usize = 3_000;
const THROUGHPUT_EVENTS: u64 = 200_000;
const PAYLOAD: u64 = 42;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(port: u16) -> Server {
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server on PATH (bench/nats.sh installs it)");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line.unwrap_or_default().contains("Server is ready") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Server(child)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn line(metric: &str, value: f64, baseline: f64) {
    println!(
        "{metric}: {value:.2} baseline: {baseline:.2} ratio: {:.3}",
        value / baseline
    );
}

/// A bus linked to NATS, connected.
fn linked_bus(url: &str) -> (EventBus, serve_common::event::NatsEvents) {
    let bus = EventBus::new();
    let connected = bus.wait_for(CONNECTED_EVENT).unwrap();
    let mut options = NatsOptions::new(url);
    options.subject_prefix = "bench".into();
    options.buffer = 1 << 20;
    let link = bus.enable_nats(options).unwrap();
    connected.wait(Duration::from_secs(30)).unwrap();
    (bus, link)
}

/// Our latency and throughput.
fn ours(url: &str) -> (f64, f64) {
    let (a, _link_a) = linked_bus(url);
    let (b, _link_b) = linked_bus(url);
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    let _registration = b
        .on("bench.ping")
        .call_data(move |_: &u64| {
            seen.fetch_add(1, Ordering::Release);
        })
        .unwrap();
    // B's subscription reaches the server before the first ping: wait for
    // one to arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Acquire) == 0 {
        a.notify("bench.ping", PAYLOAD);
        let until = Instant::now() + Duration::from_millis(50);
        while count.load(Ordering::Acquire) == 0 && Instant::now() < until {
            std::hint::spin_loop();
        }
        assert!(Instant::now() < deadline, "B never heard A");
    }
    let flushed = count.load(Ordering::Acquire);
    let _ = flushed;

    let mut latencies = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let before = count.load(Ordering::Acquire);
        let started = Instant::now();
        a.notify("bench.ping", PAYLOAD);
        while count.load(Ordering::Acquire) == before {
            std::hint::spin_loop();
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }

    let start_count = count.load(Ordering::Acquire);
    let started = Instant::now();
    for _ in 0..THROUGHPUT_EVENTS {
        a.notify("bench.ping", PAYLOAD);
    }
    let target = start_count + THROUGHPUT_EVENTS;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::Acquire) < target {
        // Not a spin: the cores are the link's and the server's.
        std::thread::sleep(Duration::from_micros(200));
        assert!(
            Instant::now() < deadline,
            "B got {} of {THROUGHPUT_EVENTS}",
            count.load(Ordering::Acquire) - start_count
        );
    }
    let rate = THROUGHPUT_EVENTS as f64 / started.elapsed().as_secs_f64();
    (median(latencies), rate)
}

/// Bare async-nats: round trip halved, and publish throughput.
fn bare(url: &str) -> (f64, f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connect = || {
            async_nats::ConnectOptions::new()
                .subscription_capacity(1 << 20)
                .connect(url)
        };
        let a = connect().await.unwrap();
        let b = connect().await.unwrap();
        // The payload our events carry: a CBOR u64 in a CBOR envelope of
        // about the same size.
        let payload = bytes::Bytes::from(vec![7u8; 40]);

        let mut pings = b.subscribe("bare.ping").await.unwrap();
        let replier = b.clone();
        tokio::spawn(async move {
            while let Some(message) = pings.next().await {
                replier.publish("bare.pong", message.payload).await.unwrap();
                replier.flush().await.unwrap();
            }
        });
        b.flush().await.unwrap();
        let mut pongs = a.subscribe("bare.pong").await.unwrap();
        a.flush().await.unwrap();
        let mut halves = Vec::with_capacity(ROUND_TRIPS);
        for _ in 0..ROUND_TRIPS + 100 {
            let started = Instant::now();
            a.publish("bare.ping", payload.clone()).await.unwrap();
            a.flush().await.unwrap();
            pongs.next().await.unwrap();
            halves.push(started.elapsed().as_secs_f64() * 1e6 / 2.0);
        }
        let latency = median(halves.split_off(100));

        let mut sink = b.subscribe("bare.flood").await.unwrap();
        b.flush().await.unwrap();
        let started = Instant::now();
        let counting = tokio::spawn(async move {
            let mut n = 0u64;
            while n < THROUGHPUT_EVENTS {
                sink.next().await.unwrap();
                n += 1;
            }
        });
        for _ in 0..THROUGHPUT_EVENTS {
            a.publish("bare.flood", payload.clone()).await.unwrap();
        }
        a.flush().await.unwrap();
        counting.await.unwrap();
        let rate = THROUGHPUT_EVENTS as f64 / started.elapsed().as_secs_f64();
        (latency, rate)
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let port = free_port();
    let _server = start_server(port);
    let url = format!("nats://127.0.0.1:{port}");
    let (bare_latency, bare_rate) = bare(&url);
    let (latency, rate) = ours(&url);
    line("nats_event_us", latency, bare_latency);
    line("nats_events_per_s", rate, bare_rate);
}
