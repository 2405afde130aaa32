//! Async event handlers: their futures run on the bus's runtime, in
//! order, bounded; real threads, gates instead of sleeps.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serve_common::event::{self, Completion, Event, EventBus};
use serve_common::on_event;
use serve_common_tests::logs;
use tokio::sync::Semaphore;

const LONG: Duration = Duration::from_secs(10);

#[test]
fn async_handlers_start_in_order_and_a_pending_one_blocks_nothing() {
    let bus = EventBus::new();
    let (started_tx, started) = mpsc::channel();
    let finished = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    for name in ["a", "b", "c"] {
        let (started_tx, finished, gate) = (started_tx.clone(), finished.clone(), gate.clone());
        let builder = if name == "c" {
            bus.on("job").ack()
        } else {
            bus.on("job")
        };
        builder
            .call_async(move |_: Event| {
                let (started_tx, finished, gate) =
                    (started_tx.clone(), finished.clone(), gate.clone());
                async move {
                    started_tx.send(name).unwrap();
                    // Pending until the test opens the gate.
                    gate.acquire().await.unwrap().forget();
                    finished.fetch_add(1, Ordering::SeqCst);
                }
            })
            .unwrap();
    }
    let (tx, rx) = mpsc::channel();
    bus.register("other", move |_: &Event| tx.send(()).unwrap())
        .unwrap();
    let acked = bus.wait_for("completed:job").unwrap();
    bus.notify("job", ());
    let order: Vec<&str> = (0..3)
        .map(|_| started.recv_timeout(LONG).unwrap())
        .collect();
    assert_eq!(order, ["a", "b", "c"], "they start in registration order");
    // All three are pending: the dispatcher and sync handlers go on.
    bus.notify("other", ());
    rx.recv_timeout(LONG).expect("a sync handler ran meanwhile");
    assert_eq!(bus.async_handlers_in_flight(), 3);
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    gate.add_permits(3);
    let ack = acked.wait(LONG).unwrap();
    assert_eq!(ack.payload::<Completion>().unwrap().error, None);
    assert!(
        finished.load(Ordering::SeqCst) >= 1,
        "the acknowledgement follows the run"
    );
}

#[test]
fn an_async_once_handler_runs_once_and_failures_and_panics_are_logged() {
    let logs = logs();
    let bus = EventBus::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    bus.on("once")
        .once()
        .ack()
        .call_async(move |_: Event| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    let ack = bus.wait_for("completed:once").unwrap();
    bus.notify("once", ());
    bus.notify("once", ());
    ack.wait(LONG).unwrap();
    assert!(bus.flush(LONG));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    bus.on("async.fails")
        .ack()
        .call_async(|_: Event| async { Err::<(), _>("async said no") })
        .unwrap();
    bus.on("async.panics")
        .ack()
        .call_async(|event: Event| async move {
            tokio::task::yield_now().await;
            if event.name() == "async.panics" {
                panic!("boom in async handler");
            }
        })
        .unwrap();
    let ack = bus.notify_and_wait("async.fails", (), None, LONG).unwrap();
    assert_eq!(
        ack.payload::<Completion>().unwrap().error.as_deref(),
        Some("async said no")
    );
    let ack = bus.notify_and_wait("async.panics", (), None, LONG).unwrap();
    let error = ack.payload::<Completion>().unwrap().error.clone().unwrap();
    assert!(error.contains("boom in async handler"), "{error}");
    assert_eq!(bus.failures(), 2);
    let lines = logs.lines_with("event=async.panics");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("panicked") && l.contains("boom")),
        "{lines:?}"
    );
    assert!(
        logs.lines_with("event=async.fails")
            .iter()
            .any(|l| l.contains("event handler failed")),
    );
    // The loop and the runtime go on.
    let ack = bus.notify_and_wait("async.fails", (), None, LONG).unwrap();
    assert!(ack.payload::<Completion>().unwrap().error.is_some());
}

/// Registers an async handler on `name` that waits at `gate`; acknowledged.
fn gated(bus: &EventBus, name: &'static str, gate: &Arc<Semaphore>) {
    let gate = gate.clone();
    bus.on(name)
        .ack()
        .call_async(move |_: Event| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
            }
        })
        .unwrap();
}

#[test]
fn at_the_cap_a_run_waits_for_room_then_is_dropped_and_counted() {
    let logs = logs();
    let bus = EventBus::new();
    let gate = Arc::new(Semaphore::new(0));
    gated(&bus, "capped", &gate);
    bus.limit_async_handlers(2, Duration::from_millis(100));
    let acks = bus.wait_for("completed:capped").unwrap();
    for _ in 0..3 {
        bus.notify("capped", ());
    }
    // The third found no room within the wait: dropped, acknowledged with
    // the error, logged, counted.
    let ack = acks.wait(LONG).unwrap();
    let error = ack.payload::<Completion>().unwrap().error.clone().unwrap();
    assert!(
        error.starts_with("dropped: 2 async handler runs in flight"),
        "{error}"
    );
    assert_eq!(bus.async_handlers_dropped(), 1);
    assert!(
        logs.lines_with("event=capped")
            .iter()
            .any(|l| l.contains("dropped: 2 async"))
    );
    assert_eq!(bus.async_handlers_in_flight(), 2);

    // With a long wait, a run at the cap waits for room instead.
    bus.limit_async_handlers(2, LONG);
    let (tx, rx) = mpsc::channel();
    bus.on("completed:capped")
        .call(move |e: &Event| {
            tx.send(e.payload::<Completion>().unwrap().error.clone())
                .unwrap()
        })
        .unwrap();
    bus.notify("capped", ());
    gate.add_permits(3);
    for _ in 0..3 {
        assert_eq!(rx.recv_timeout(LONG).unwrap(), None, "all three ran");
    }
    assert_eq!(bus.async_handlers_dropped(), 1);
    assert!(bus.flush(LONG));
}

// --- `#[on_event]` on an `async fn`, on the global bus ----------------

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    id: u64,
}

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[on_event("async.macro.job", ack)]
async fn an_async_handler(event: &str, job: &Job) -> Result<(), String> {
    tokio::task::yield_now().await;
    SEEN.lock().unwrap().push(format!("{event} {}", job.id));
    Ok(())
}

#[on_event("async.macro.fails", ack)]
async fn an_async_handler_that_fails(_: &u32) -> Result<(), std::fmt::Error> {
    Err(std::fmt::Error)
}

#[test]
fn on_event_async_fns_are_registered_and_acknowledged_when_done() {
    let ack = event::notify_and_wait("async.macro.job", Job { id: 7 }, None, LONG).unwrap();
    assert_eq!(ack.payload::<Completion>().unwrap().error, None);
    assert_eq!(*SEEN.lock().unwrap(), ["async.macro.job 7"]);
    // A payload from another process decodes the same way.
    let waiter = event::wait_for("completed:async.macro.job").unwrap();
    let encoded = Event::new("async.macro.job", Job { id: 8 })
        .encode_payload()
        .unwrap();
    event::bus().deliver(Event::from_remote("async.macro.job", encoded));
    waiter.wait(LONG).unwrap();
    assert_eq!(SEEN.lock().unwrap().len(), 2);
    // A mistyped payload fails the run, acknowledged with the error.
    let ack = event::notify_and_wait("async.macro.job", "not a job", None, LONG).unwrap();
    assert!(ack.payload::<Completion>().unwrap().error.is_some());
    let ack = event::notify_and_wait("async.macro.fails", 1_u32, None, LONG).unwrap();
    assert!(ack.payload::<Completion>().unwrap().error.is_some());
}
