//! Events over NATS against bare async-nats, on `nats-server` processes
//! started here (from PATH). "Host A" and "host B" are two event buses,
//! each with its own NATS connection (what two processes would have), in
//! this process so one clock times both ends. Ours and the baseline
//! alternate (`NATS_BENCH_ROUNDS`, default 4; each pair runs in both
//! orders) and the medians are printed.
//!
//! JetStream (`delivery = "jetstream"`):
//! - `nats_js_events_per_s`: events per second from A's `notify` until
//!   B's handler ran for all; baseline: bare async-nats JetStream, publish
//!   with acknowledgements awaited in a window of the same size
//!   ([`DEFAULT_ACK_WINDOW`]), one pull consumer on another connection
//!   reading the same kind of stream.
//! - `nats_js_event_us`: median time from `notify` on A until B's handler
//!   ran; baseline: bare JetStream publish until the consumer has it.
//! - `nats_js_restart_loss`: events B never got when the server is killed
//!   (`SIGKILL`) and restarted while A sends 20,000 (report only).
//!
//! At most once (`delivery = "at-most-once"`):
//! - `nats_event_us`: as `nats_js_event_us`; baseline: a bare
//!   publish/subscribe round trip (A publishes, B's subscriber answers, A
//!   receives) halved.
//! - `nats_events_per_s`: baseline: bare async-nats publish of the same
//!   payloads to a subscriber on another connection.
//!
//! `NATS_BENCH_ONLY=js|bare-js|amo|bare-amo` runs one side alone, once
//! (latency then throughput), and prints `# <side>: <µs> us <n>/s`: what
//! to run under a profiler (`perf record ... --bench`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serve_common::event::nats::{Delivery, NatsOptions, CONNECTED_EVENT, DEFAULT_ACK_WINDOW};
use serve_common::event::EventBus;

const ROUND_TRIPS: usize = 2_000;
const THROUGHPUT_EVENTS: u64 = 100_000;
const RESTART_EVENTS: u64 = 20_000;
const PAYLOAD: u64 = 42;
/// A latency round that takes longer is counted as lost (and printed).
const LOST_AFTER: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    args: Vec<String>,
    _store: tempfile::TempDir,
}

impl Server {
    fn start(port: u16) -> Self {
        let store = tempfile::tempdir().unwrap();
        let args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            store.path().to_str().unwrap(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        println!("# + nats-server {}", args.join(" "));
        Self {
            child: spawn(&args),
            args,
            _store: store,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.args);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(args: &[String]) -> Child {
    let mut child = Command::new("nats-server")
        .args(args)
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
    child
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

/// A bus linked to NATS, carrying events.
fn linked_bus(url: &str, delivery: Delivery) -> (EventBus, serve_common::event::NatsEvents) {
    let bus = EventBus::new();
    let connected = bus.wait_for(CONNECTED_EVENT).unwrap();
    let mut options = NatsOptions::new(url);
    options.subject_prefix = match delivery {
        Delivery::JetStream => "bench.js".into(),
        Delivery::AtMostOnce => "bench.amo".into(),
    };
    options.delivery = delivery;
    options.buffer = 1 << 20;
    let link = bus.enable_nats(options).unwrap();
    connected.wait(Duration::from_secs(30)).unwrap();
    (bus, link)
}

/// B counts the `bench.ping` events it handles.
fn counting(b: &EventBus) -> (Arc<AtomicU64>, serve_common::event::Registration) {
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    let registration = b
        .on("bench.ping")
        .call_data(move |_: &u64| {
            seen.fetch_add(1, Ordering::Release);
        })
        .unwrap();
    (count, registration)
}

/// Notifies until B has one: B's subscription (or consumer) is in place.
fn until_heard(a: &EventBus, count: &AtomicU64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Acquire) == 0 {
        a.notify("bench.ping", PAYLOAD);
        let until = Instant::now() + Duration::from_millis(50);
        while count.load(Ordering::Acquire) == 0 && Instant::now() < until {
            std::hint::spin_loop();
        }
        assert!(Instant::now() < deadline, "B never heard A");
    }
}

/// Waits until `count` reaches `target`: how long since `started`.
fn until_count(count: &AtomicU64, target: u64, started: Instant) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    while count.load(Ordering::Acquire) < target {
        // Not a spin: the cores are the links' and the server's.
        std::thread::sleep(Duration::from_micros(200));
        assert!(
            Instant::now() < deadline,
            "B got {} of {target}",
            count.load(Ordering::Acquire)
        );
    }
    started.elapsed().as_secs_f64()
}

/// Our latency (µs) and throughput (events/s).
fn ours(url: &str, delivery: Delivery) -> (f64, f64) {
    let (a, _link_a) = linked_bus(url, delivery);
    let (b, _link_b) = linked_bus(url, delivery);
    let (count, _registration) = counting(&b);
    until_heard(&a, &count);
    // What arrived late from the warm-up.
    std::thread::sleep(Duration::from_millis(200));

    let mut latencies = Vec::with_capacity(ROUND_TRIPS);
    let mut lost = 0;
    for _ in 0..ROUND_TRIPS {
        let before = count.load(Ordering::Acquire);
        let started = Instant::now();
        a.notify("bench.ping", PAYLOAD);
        // An event that never comes is counted, not waited for forever.
        // A spin, as the baseline's wait (a task yielding to its runtime).
        while count.load(Ordering::Acquire) == before && started.elapsed() < LOST_AFTER {
            std::hint::spin_loop();
        }
        if count.load(Ordering::Acquire) == before {
            lost += 1;
            continue;
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }
    if lost > 0 {
        println!("# ours ({delivery:?}): {lost} of {ROUND_TRIPS} latency events lost");
    }

    let start_count = count.load(Ordering::Acquire);
    let started = Instant::now();
    for _ in 0..THROUGHPUT_EVENTS {
        a.notify("bench.ping", PAYLOAD);
    }
    let seconds = until_count(&count, start_count + THROUGHPUT_EVENTS, started);
    (median(latencies), THROUGHPUT_EVENTS as f64 / seconds)
}

/// The payload our events carry: a CBOR u64 in a CBOR envelope of about
/// the same size.
fn bare_payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![7u8; 40])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn bare_connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(url)
        .await
        .unwrap()
}

/// Bare core NATS: round trip halved, and publish throughput.
fn bare_core(url: &str) -> (f64, f64) {
    runtime().block_on(async {
        let a = bare_connect(url).await;
        let b = bare_connect(url).await;
        let payload = bare_payload();
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
        let mut halves = Vec::with_capacity(ROUND_TRIPS + 100);
        let mut lost = 0;
        for n in 0..ROUND_TRIPS as u64 + 100 {
            // Numbered, so a late pong is not taken for the next one's.
            let ping = bytes::Bytes::from(n.to_be_bytes().to_vec());
            let started = Instant::now();
            a.publish("bare.ping", ping.clone()).await.unwrap();
            a.flush().await.unwrap();
            let answered = tokio::time::timeout(LOST_AFTER, async {
                while let Some(pong) = pongs.next().await {
                    if pong.payload == ping {
                        return true;
                    }
                }
                false
            })
            .await;
            if answered != Ok(true) {
                lost += 1;
                continue;
            }
            if n >= 100 {
                halves.push(started.elapsed().as_secs_f64() * 1e6 / 2.0);
            }
        }
        if lost > 0 {
            println!("# bare core: {lost} of {} pings lost", ROUND_TRIPS + 100);
        }
        let latency = median(halves);

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

/// Bare JetStream: publish-to-consumer latency, and throughput with
/// acknowledgements awaited in a window of [`DEFAULT_ACK_WINDOW`].
fn bare_jetstream(url: &str, round: usize) -> (f64, f64) {
    use async_nats::jetstream::{self, consumer, stream};
    runtime().block_on(async {
        let a = bare_connect(url).await;
        let b = bare_connect(url).await;
        let js_a = jetstream::ContextBuilder::new()
            .max_ack_inflight(DEFAULT_ACK_WINDOW + 1)
            .backpressure_on_inflight(true)
            .build(a);
        let js_b = jetstream::new(b);
        let name = format!("BARE{round}");
        let subject = format!("bare{round}.ping");
        let stream = js_a
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("bare{round}.>")],
                max_bytes: 1 << 30,
                ..Default::default()
            })
            .await
            .unwrap();
        let _ = stream;
        let reader = js_b.get_stream(&name).await.unwrap();
        let consumer = reader
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1_000)
            .heartbeat(Duration::from_secs(1))
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            // A missed heartbeat on a loaded machine is an error item, not
            // the end: the pull stream goes on.
            while let Some(message) = messages.next().await {
                match message {
                    Ok(_message) => {
                        seen.fetch_add(1, Ordering::Release);
                    }
                    Err(error) => println!("# bare consumer: {error}"),
                }
            }
        });
        let payload = bare_payload();
        // Warm-up: the consumer has one.
        js_a.publish(subject.clone(), payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
        while count.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let mut latencies = Vec::with_capacity(ROUND_TRIPS);
        let mut lost = 0;
        for n in 0..ROUND_TRIPS {
            let before = count.load(Ordering::Acquire);
            let started = Instant::now();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("w{n}").as_str(),
            );
            let ack = js_a
                .publish_with_headers(subject.clone(), headers, payload.clone())
                .await
                .unwrap();
            while count.load(Ordering::Acquire) == before && started.elapsed() < LOST_AFTER {
                tokio::task::yield_now().await;
            }
            if count.load(Ordering::Acquire) == before {
                lost += 1;
            } else {
                latencies.push(started.elapsed().as_secs_f64() * 1e6);
            }
            ack.await.unwrap();
        }

        if lost > 0 {
            println!("# bare js: {lost} of {ROUND_TRIPS} latency events lost");
        }
        let start_count = count.load(Ordering::Acquire);
        let started = Instant::now();
        let mut inflight = futures_util::stream::FuturesUnordered::new();
        for n in 0..THROUGHPUT_EVENTS {
            if inflight.len() >= DEFAULT_ACK_WINDOW {
                let acked: Result<_, _> = inflight.next().await.unwrap();
                acked.unwrap();
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("t{n}").as_str(),
            );
            let ack = js_a
                .publish_with_headers(subject.clone(), headers, payload.clone())
                .await
                .unwrap();
            inflight.push(std::future::IntoFuture::into_future(ack));
        }
        while let Some(acked) = inflight.next().await {
            let _: async_nats::jetstream::publish::PublishAck = acked.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        while count.load(Ordering::Acquire) < start_count + THROUGHPUT_EVENTS {
            tokio::time::sleep(Duration::from_micros(200)).await;
            assert!(Instant::now() < deadline, "the bare consumer stopped");
        }
        let rate = THROUGHPUT_EVENTS as f64 / started.elapsed().as_secs_f64();
        (median(latencies), rate)
    })
}

/// Events B never got when the server is killed and restarted while A
/// sends [`RESTART_EVENTS`].
fn restart_loss(server: &mut Server, url: &str) -> u64 {
    let (a, link_a) = linked_bus(url, Delivery::JetStream);
    let (b, _link_b) = linked_bus(url, Delivery::JetStream);
    let seen = Arc::new(parking_lot::Mutex::new(std::collections::HashSet::new()));
    let record = seen.clone();
    let _registration = b
        .on("bench.restart")
        .call_data(move |n: &u64| {
            record.lock().insert(*n);
        })
        .unwrap();
    // B's consumer is in place once it hears one.
    a.notify("bench.restart", u64::MAX);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().is_empty() {
        assert!(Instant::now() < deadline, "B never heard A");
        std::thread::sleep(Duration::from_millis(5));
    }
    for n in 0..RESTART_EVENTS {
        a.notify("bench.restart", n);
    }
    // Mid-stream: the link has some and is sending.
    let deadline = Instant::now() + Duration::from_secs(10);
    while link_a.buffered() == 0 && Instant::now() < deadline {
        std::hint::spin_loop();
    }
    let unconfirmed = link_a.buffered();
    server.kill();
    server.restart();
    println!("# restart: {unconfirmed} events unconfirmed when the server was killed");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = seen.lock().len() as u64 - 1;
        if got >= RESTART_EVENTS || Instant::now() > deadline {
            return RESTART_EVENTS - got.min(RESTART_EVENTS);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("NATS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    let port = free_port();
    let mut server = Server::start(port);
    let url = format!("nats://127.0.0.1:{port}");
    // One side alone, for a profiler: `js`, `bare-js`, `amo`, `bare-amo`.
    if let Ok(only) = std::env::var("NATS_BENCH_ONLY") {
        let (latency, rate) = match only.as_str() {
            "js" => ours(&url, Delivery::JetStream),
            "bare-js" => bare_jetstream(&url, 0),
            "amo" => ours(&url, Delivery::AtMostOnce),
            "bare-amo" => bare_core(&url),
            other => panic!("NATS_BENCH_ONLY={other}: js, bare-js, amo or bare-amo"),
        };
        println!("# {only}: {latency:.1} us {rate:.0}/s");
        return;
    }
    let mut figures: [Vec<f64>; 8] = Default::default();
    for round in 0..rounds {
        // Each pair runs in one order, then the other: what one leaves
        // the server doing (a stream's writes) weighs on both alike.
        let ((js_latency, js_rate), (bare_js_latency, bare_js_rate)) = if round % 2 == 0 {
            let ours = ours(&url, Delivery::JetStream);
            (ours, bare_jetstream(&url, round))
        } else {
            let bare = bare_jetstream(&url, round);
            (ours(&url, Delivery::JetStream), bare)
        };
        let ((latency, rate), (bare_latency, bare_rate)) = if round % 2 == 1 {
            let ours = ours(&url, Delivery::AtMostOnce);
            (ours, bare_core(&url))
        } else {
            let bare = bare_core(&url);
            (ours(&url, Delivery::AtMostOnce), bare)
        };
        println!(
            "# round {round}: js {js_latency:.1} us {js_rate:.0}/s, bare js {bare_js_latency:.1} us {bare_js_rate:.0}/s; at most once {latency:.1} us {rate:.0}/s, bare {bare_latency:.1} us {bare_rate:.0}/s"
        );
        for (i, value) in [
            js_rate,
            bare_js_rate,
            js_latency,
            bare_js_latency,
            latency,
            bare_latency,
            rate,
            bare_rate,
        ]
        .into_iter()
        .enumerate()
        {
            figures[i].push(value);
        }
    }
    let m = |i: usize| median(figures[i].clone());
    line("nats_js_events_per_s", m(0), m(1));
    line("nats_js_event_us", m(2), m(3));
    line("nats_event_us", m(4), m(5));
    line("nats_events_per_s", m(6), m(7));
    let loss = restart_loss(&mut server, &url);
    println!("nats_js_restart_loss: {loss} baseline: - ratio: -");
}
