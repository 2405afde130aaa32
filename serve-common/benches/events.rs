//! `bash bench/events.sh`: event throughput and `notify_and_wait` latency,
//! each with the baseline the issue names, measured in the same run.

use std::any::Any;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serve_common::event::{Event, EventBus};

const EVENTS: u64 = 400_000;
const ROUNDS: usize = 5;

/// One run of `run`, in events per second.
fn rate(run: impl Fn() -> Duration) -> f64 {
    EVENTS as f64 / run().as_secs_f64()
}

/// The baseline: a std channel of `(String, Box<dyn Any + Send>)` between
/// two threads and one `HashMap` lookup on the receiver.
fn mpsc_baseline() -> Duration {
    let (tx, rx) = mpsc::channel::<(String, Box<dyn Any + Send>)>();
    let receiver = thread::spawn(move || {
        let mut handlers: HashMap<String, fn(&dyn Any)> = HashMap::new();
        handlers.insert("job.done".to_owned(), |payload| {
            black_box(payload);
        });
        for _ in 0..EVENTS {
            let (name, payload) = rx.recv().unwrap();
            if let Some(handler) = handlers.get(&name) {
                handler(&*payload);
            }
        }
    });
    let start = Instant::now();
    for n in 0..EVENTS {
        tx.send(("job.done".to_owned(), Box::new(n))).unwrap();
    }
    receiver.join().unwrap();
    start.elapsed()
}

/// Notifies `EVENTS` events named by `name(n)` and returns the time until
/// the last one's handler ran.
fn bus_run(bus: &EventBus, counter: &Arc<AtomicU64>, name: impl Fn(u64) -> String) -> Duration {
    counter.store(0, Ordering::SeqCst);
    let names: Vec<Arc<str>> = (0..EVENTS).map(|n| Arc::from(name(n))).collect();
    let start = Instant::now();
    for (n, name) in names.into_iter().enumerate() {
        bus.notify(name, n as u64);
    }
    let done = bus.wait_for("bench.done").unwrap();
    bus.notify("bench.done", ());
    done.wait(Duration::from_secs(120)).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(
        counter.load(Ordering::SeqCst),
        EVENTS,
        "every event reached its handler"
    );
    elapsed
}

fn counting(counter: &Arc<AtomicU64>) -> impl Fn(&Event) + Send + Sync + 'static {
    let counter = counter.clone();
    move |event: &Event| {
        black_box(event.payload::<u64>().unwrap());
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn exact() -> Duration {
    let bus = EventBus::new();
    let counter = Arc::new(AtomicU64::new(0));
    bus.register("job.done", counting(&counter)).unwrap();
    bus_run(&bus, &counter, |_| "job.done".to_owned())
}

fn thousand_patterns() -> Duration {
    let bus = EventBus::new();
    let counter = Arc::new(AtomicU64::new(0));
    let never = |_: &Event| -> () { panic!("a pattern that should not match did") };
    for i in 0..499 {
        bus.register(format!("svc{i}.*.started"), never).unwrap();
    }
    for i in 0..500 {
        bus.register(format!("re:svc{i}\\.\\d+\\.(stopped|failed)"), never)
            .unwrap();
    }
    bus.register("job.*.done", counting(&counter)).unwrap();
    // Distinct names: no per-name cache can help.
    bus_run(&bus, &counter, |n| format!("job.{n}.done"))
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

const TRIPS: usize = 20_000;

/// The baseline: a two-thread `thread::park`/`unpark` ping-pong.
fn park_ping_pong() -> f64 {
    let turn = Arc::new(AtomicU64::new(0));
    let main = thread::current();
    let peer_turn = turn.clone();
    let peer = thread::spawn(move || {
        for i in 0..TRIPS as u64 {
            while peer_turn.load(Ordering::Acquire) != 2 * i + 1 {
                thread::park();
            }
            peer_turn.store(2 * i + 2, Ordering::Release);
            main.unpark();
        }
    });
    let mut samples = Vec::with_capacity(TRIPS);
    for i in 0..TRIPS as u64 {
        let start = Instant::now();
        turn.store(2 * i + 1, Ordering::Release);
        peer.thread().unpark();
        while turn.load(Ordering::Acquire) != 2 * i + 2 {
            thread::park();
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    peer.join().unwrap();
    median(samples)
}

fn notify_and_wait() -> f64 {
    let bus = EventBus::new();
    bus.on("ping").ack().call(|_: &Event| ()).unwrap();
    let mut samples = Vec::with_capacity(TRIPS);
    for i in 0..TRIPS {
        let start = Instant::now();
        bus.notify_and_wait("ping", i as u64, None, Duration::from_secs(10))
            .unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    median(samples)
}

const ASYNC_EVENTS: u64 = 200_000;

/// Waits until `count` reaches `ASYNC_EVENTS`: the last run says so.
fn counting_future(
    count: &Arc<AtomicU64>,
    done: &Arc<parking_lot::Mutex<Option<mpsc::Sender<()>>>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (count, done) = (count.clone(), done.clone());
    async move {
        if count.fetch_add(1, Ordering::Relaxed) + 1 == ASYNC_EVENTS {
            if let Some(tx) = done.lock().take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Events per second through one async handler that does nothing.
fn async_handler(bus: &EventBus) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(parking_lot::Mutex::new(Some(tx)));
    let (c, d) = (count.clone(), done.clone());
    let registration = bus
        .on("bench.async")
        .call_async(move |_: Event| counting_future(&c, &d))
        .unwrap();
    let start = Instant::now();
    for n in 0..ASYNC_EVENTS {
        bus.notify("bench.async", n);
    }
    rx.recv_timeout(Duration::from_secs(120)).unwrap();
    let elapsed = start.elapsed();
    registration.unregister();
    assert_eq!(bus.async_handlers_dropped(), 0);
    ASYNC_EVENTS as f64 / elapsed.as_secs_f64()
}

/// The baseline: a plain thread takes each event from a channel and
/// `spawn`s an empty future on a one-worker tokio runtime.
fn spawn_baseline(runtime: &tokio::runtime::Runtime) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(parking_lot::Mutex::new(Some(tx)));
    let (events_tx, events_rx) = mpsc::channel::<(Arc<str>, u64)>();
    let handle = runtime.handle().clone();
    let (c, d) = (count.clone(), done.clone());
    let spawner = thread::spawn(move || {
        for (name, n) in events_rx {
            black_box((&name, n));
            handle.spawn(counting_future(&c, &d));
        }
    });
    let name: Arc<str> = Arc::from("bench.async");
    let start = Instant::now();
    for n in 0..ASYNC_EVENTS {
        events_tx.send((name.clone(), n)).unwrap();
    }
    rx.recv_timeout(Duration::from_secs(120)).unwrap();
    let elapsed = start.elapsed();
    drop(events_tx);
    spawner.join().unwrap();
    ASYNC_EVENTS as f64 / elapsed.as_secs_f64()
}

fn line(metric: &str, value: f64, baseline: f64) {
    println!(
        "{metric}: {value:.2} baseline: {baseline:.2} ratio: {:.3}",
        value / baseline
    );
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    // Ours and each baseline alternate, `ROUNDS` times, and the medians
    // are compared: a wake-up's cost depends on whether the other core is
    // idle, which changes over a run.
    let (mut baseline, mut exact_rates, mut patterns) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ping_pong, mut round_trip) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        baseline.push(rate(mpsc_baseline));
        exact_rates.push(rate(exact));
        patterns.push(rate(thousand_patterns));
        ping_pong.push(park_ping_pong());
        round_trip.push(notify_and_wait());
    }
    println!("# events_exact_per_s rounds: ours {exact_rates:.0?} baseline {baseline:.0?}");
    println!("# notify_and_wait_us rounds: ours {round_trip:.2?} baseline {ping_pong:.2?}");
    let (baseline, exact, patterns) = (median(baseline), median(exact_rates), median(patterns));
    let (ping_pong, round_trip) = (median(ping_pong), median(round_trip));
    // Ours and the baseline alternate; medians of 5.
    let bus = EventBus::new();
    bus.limit_async_handlers(1024, Duration::from_secs(60));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        ours.push(async_handler(&bus));
        theirs.push(spawn_baseline(&runtime));
    }
    println!("# events_async_per_s rounds: ours {ours:.0?} baseline {theirs:.0?}");
    let (async_ours, async_theirs) = (median(ours), median(theirs));
    line("events_exact_per_s", exact, baseline);
    line("events_1000_patterns_per_s", patterns, exact);
    line("notify_and_wait_us", round_trip, ping_pong);
    line("events_async_per_s", async_ours, async_theirs);
}
