//! The event bus, in-process: real threads, no sleeps. This crate forbids
//! unsafe code, so it also shows `#[on_event]` compiles in such a crate.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serve_common::event::{
    self, Completion, Event, EventBus, EventPattern, EventTransport, Origin, WaitError,
};
use serve_common::on_event;
use serve_common_tests::{block_on, logs};

const LONG: Duration = Duration::from_secs(10);

fn recorder() -> (Arc<Mutex<Vec<String>>>, impl Fn(&str) + Clone) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let push = {
        let seen = seen.clone();
        move |s: &str| seen.lock().unwrap().push(s.to_owned())
    };
    (seen, push)
}

#[test]
fn exact_glob_and_regex_patterns_match_whole_names() {
    let bus = EventBus::new();
    let (seen, push) = recorder();
    for pattern in [
        "job.1.done",
        "job.*.done",
        "re:job\\.\\d+\\.done",
        "re:done",
    ] {
        let push = push.clone();
        bus.register(pattern, move |e: &Event| {
            push(&format!("{pattern} <- {}", e.name()))
        })
        .unwrap();
    }
    bus.notify("job.1.done", ());
    bus.notify("job.x.done", ());
    bus.notify("job.1.done.later", ());
    assert!(bus.flush(LONG));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "job.1.done <- job.1.done",
            "job.*.done <- job.1.done",
            "re:job\\.\\d+\\.done <- job.1.done",
            "job.*.done <- job.x.done",
        ]
    );
}

#[test]
fn handlers_run_in_registration_order_across_kinds() {
    let bus = EventBus::new();
    let (seen, push) = recorder();
    let patterns = ["re:a.*", "a.b", "a.*", "a.b", "re:a\\.b"];
    for (i, pattern) in patterns.into_iter().enumerate() {
        let push = push.clone();
        bus.register(pattern, move |_: &Event| push(&i.to_string()))
            .unwrap();
    }
    bus.notify("a.b", ());
    assert!(bus.flush(LONG));
    assert_eq!(*seen.lock().unwrap(), ["0", "1", "2", "3", "4"]);
}

#[test]
fn unregister_stops_calls_and_once_runs_once() {
    let bus = EventBus::new();
    let (calls, once_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let c = calls.clone();
    let registration = bus
        .register("tick", move |_: &Event| {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let o = once_calls.clone();
    let once = bus
        .on("t*")
        .once()
        .call(move |_: &Event| {
            o.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    bus.notify("tick", ());
    bus.notify("tock", ());
    assert!(bus.flush(LONG));
    assert_eq!(once_calls.load(Ordering::SeqCst), 1);
    assert!(
        !once.is_active(),
        "a single-use handler is gone after it ran"
    );
    assert!(!once.unregister());
    assert!(registration.is_active());
    assert!(registration.unregister());
    bus.notify("tick", ());
    assert!(bus.flush(LONG));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    name: String,
}

/// The same shape with other types: reading a `Job` as a `JobView` needs
/// a serde conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JobView {
    id: u32,
    name: String,
}

#[test]
fn typed_handlers_with_and_without_the_event_name() {
    let bus = EventBus::new();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    bus.on("job.*")
        .call_typed(move |name: &str, job: &Job| tx.send(format!("{name} {}", job.id)).unwrap())
        .unwrap();
    bus.on("job.*")
        .call_data(move |job: &JobView| tx2.send(format!("data {}", job.name)).unwrap())
        .unwrap();
    bus.notify(
        "job.start",
        Job {
            id: 7,
            name: "seven".into(),
        },
    );
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "job.start 7");
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "data seven");
}

/// Counts its serializations: in-process delivery to a handler of the same
/// type must not serialize it.
#[derive(Debug, Deserialize)]
struct Counted(u32);

static SERIALIZED: AtomicUsize = AtomicUsize::new(0);

impl Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SERIALIZED.fetch_add(1, Ordering::SeqCst);
        s.serialize_newtype_struct("Counted", &self.0)
    }
}

#[test]
fn same_type_payloads_are_borrowed_other_types_are_converted() {
    let bus = EventBus::new();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    bus.on("counted")
        .call(move |e: &Event| {
            let payload = e.payload::<Counted>().unwrap();
            let borrowed = matches!(payload, serve_common::event::Payload::Borrowed(_));
            tx.send((payload.0 as u64, borrowed)).unwrap();
        })
        .unwrap();
    bus.notify("counted", Counted(5));
    assert_eq!(rx.recv_timeout(LONG).unwrap(), (5, true));
    assert_eq!(
        SERIALIZED.load(Ordering::SeqCst),
        0,
        "no serialization in-process"
    );

    bus.on("counted.as.u64")
        .call_data(move |n: &u64| tx2.send((*n, false)).unwrap())
        .unwrap();
    bus.notify("counted.as.u64", Counted(6));
    assert_eq!(rx.recv_timeout(LONG).unwrap(), (6, false));
    assert_eq!(
        SERIALIZED.load(Ordering::SeqCst),
        1,
        "one conversion for the other type"
    );
}

#[test]
fn remote_payloads_decode_like_local_ones() {
    let bus = EventBus::new();
    let (tx, rx) = mpsc::channel();
    bus.on("job.*")
        .call(move |e: &Event| {
            let job = e.payload::<JobView>().unwrap().into_owned();
            tx.send((e.origin(), job)).unwrap();
        })
        .unwrap();
    let job = Job {
        id: 3,
        name: "three".into(),
    };
    bus.notify("job.local", job.clone());
    let encoded = Event::new("job.remote", job).encode_payload().unwrap();
    bus.deliver(Event::from_remote("job.remote", encoded));
    let expected = JobView {
        id: 3,
        name: "three".into(),
    };
    assert_eq!(
        rx.recv_timeout(LONG).unwrap(),
        (Origin::Local, expected.clone())
    );
    assert_eq!(rx.recv_timeout(LONG).unwrap(), (Origin::Remote, expected));
}

#[test]
fn failing_panicking_and_mistyped_handlers_are_logged_and_the_loop_goes_on() {
    let logs = logs();
    let bus = EventBus::new();
    bus.register("fail.panics", |_: &Event| -> () {
        panic!("boom in handler")
    })
    .unwrap();
    bus.register("fail.errors", |_: &Event| Err::<(), _>("handler said no"))
        .unwrap();
    bus.on("fail.mistyped").call_data(|_: &Job| ()).unwrap();
    let (tx, rx) = mpsc::channel();
    bus.register("fail.*", move |e: &Event| {
        tx.send(e.name().to_owned()).unwrap()
    })
    .unwrap();
    bus.notify("fail.panics", ());
    bus.notify("fail.errors", ());
    bus.notify("fail.mistyped", "not a job");
    for expected in ["fail.panics", "fail.errors", "fail.mistyped"] {
        assert_eq!(
            rx.recv_timeout(LONG).unwrap(),
            expected,
            "later handlers still run"
        );
    }
    assert!(bus.flush(LONG));
    assert_eq!(bus.failures(), 3);
    let panicked = logs.lines_with("event=fail.panics");
    assert!(
        panicked
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("boom in handler")),
        "{panicked:?}"
    );
    let errored = logs.lines_with("event=fail.errors");
    assert!(
        errored.iter().any(|l| l.contains("handler said no")),
        "{errored:?}"
    );
    let mistyped = logs.lines_with("event=fail.mistyped");
    assert!(
        mistyped
            .iter()
            .any(|l| l.contains("cannot be read as") && l.contains("Job")),
        "{mistyped:?}"
    );
}

#[test]
fn acknowledgements_default_and_named() {
    let bus = EventBus::new();
    bus.on("work").ack().call(|_: &Event| ()).unwrap();
    bus.on("work.named")
        .ack_as("work.finished")
        .call(|_: &Event| ())
        .unwrap();
    bus.on("work.fails")
        .ack()
        .call(|_: &Event| Err::<(), _>("nope"))
        .unwrap();

    let ack = bus.notify_and_wait("work", (), None, LONG).unwrap();
    assert_eq!(ack.name(), "completed:work");
    let completion = ack.payload::<Completion>().unwrap();
    assert_eq!(completion.event, "work");
    assert_eq!(completion.error, None);

    let ack = bus
        .notify_and_wait("work.named", (), Some("work.finished"), LONG)
        .unwrap();
    assert_eq!(ack.name(), "work.finished");

    let ack = bus.notify_and_wait("work.fails", (), None, LONG).unwrap();
    assert_eq!(
        ack.payload::<Completion>().unwrap().error.as_deref(),
        Some("nope")
    );
}

#[test]
fn notify_and_wait_times_out_without_an_acknowledging_handler() {
    let bus = EventBus::new();
    bus.register("unacked", |_: &Event| ()).unwrap();
    let error = bus
        .notify_and_wait("unacked", (), None, Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(error, WaitError::Timeout { .. }), "{error}");
    assert!(error.to_string().contains("completed:unacked"), "{error}");
}

#[test]
fn a_waiter_created_before_the_event_cannot_miss_it() {
    let bus = EventBus::new();
    let waiter = bus.wait_for("ready.*").unwrap();
    bus.notify("ready.now", 1_u8);
    // The event is dispatched before we start waiting: still seen.
    assert!(bus.flush(LONG));
    let event = waiter.wait(LONG).unwrap();
    assert_eq!(event.name(), "ready.now");

    // Awaitable too, woken from the dispatcher thread.
    let waiter = bus.wait_for("async.ready").unwrap();
    let notifier = {
        let bus = bus.clone();
        std::thread::spawn(move || bus.notify("async.ready", "hi"))
    };
    let event = block_on(waiter);
    assert_eq!(*event.payload::<String>().unwrap(), "hi");
    notifier.join().unwrap();

    let timed_out = bus
        .wait_for("never")
        .unwrap()
        .wait(Duration::from_millis(20));
    assert!(timed_out.is_err());
}

#[test]
fn bad_patterns_are_errors() {
    let bus = EventBus::new();
    let error = bus.register("re:(unclosed", |_: &Event| ()).unwrap_err();
    assert!(error.to_string().contains("re:(unclosed"), "{error}");
    assert!(bus.register("a[b", |_: &Event| ()).is_err());
    assert!(
        bus.register(EventPattern::exact("a[b"), |_: &Event| ())
            .is_ok()
    );
}

#[test]
fn handlers_may_register_and_notify_from_inside_a_handler() {
    let bus = EventBus::new();
    let (tx, rx) = mpsc::channel();
    let inner_bus = bus.clone();
    bus.on("outer")
        .once()
        .call(move |_: &Event| {
            let tx = tx.clone();
            inner_bus
                .register("inner", move |e: &Event| {
                    tx.send(e.name().to_owned()).unwrap()
                })
                .unwrap();
            inner_bus.notify("inner", ());
        })
        .unwrap();
    bus.notify("outer", ());
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "inner");
}

#[test]
fn a_thousand_patterns_each_name_matching_one() {
    let bus = EventBus::new();
    let hits = Arc::new(Mutex::new(Vec::new()));
    for n in 0..1000 {
        let hits = hits.clone();
        let pattern = if n % 2 == 0 {
            format!("job.{n}.*")
        } else {
            format!("re:job\\.{n}\\.(done|failed)")
        };
        bus.register(pattern, move |e: &Event| {
            hits.lock().unwrap().push((n, e.name().to_owned()))
        })
        .unwrap();
    }
    for n in [0, 1, 500, 999] {
        bus.notify(format!("job.{n}.done"), ());
    }
    bus.notify("job.1000.done", ());
    assert!(bus.flush(LONG));
    let hits = hits.lock().unwrap();
    let names: Vec<_> = hits.iter().map(|(n, name)| format!("{n}:{name}")).collect();
    assert_eq!(
        names,
        [
            "0:job.0.done",
            "1:job.1.done",
            "500:job.500.done",
            "999:job.999.done"
        ]
    );
}

struct Bridge(EventBus);

impl EventTransport for Bridge {
    fn publish(&self, event: &Event) {
        let encoded = event.encode_payload().expect("payloads encode");
        self.0.deliver(Event::from_remote(event.name(), encoded));
    }
}

/// Two buses joined by a transport, as two processes are by IPC: events
/// cross once, local-only ones stay, and delivered events are not echoed.
#[test]
fn transports_carry_non_local_events_once_without_echo() {
    let (a, b) = (EventBus::new(), EventBus::new());
    a.set_transport(Some(Arc::new(Bridge(b.clone()))));
    b.set_transport(Some(Arc::new(Bridge(a.clone()))));
    let (seen_a, push_a) = recorder();
    let (seen_b, push_b) = recorder();
    a.register("*", move |e: &Event| {
        push_a(&format!("{}:{:?}", e.name(), e.origin()))
    })
    .unwrap();
    b.register("*", move |e: &Event| {
        push_b(&format!("{}:{:?}", e.name(), e.origin()))
    })
    .unwrap();
    a.notify(
        "shared",
        Job {
            id: 1,
            name: "x".into(),
        },
    );
    a.notify_local("private", ());
    assert!(a.flush(LONG));
    assert!(b.flush(LONG));
    assert!(
        a.flush(LONG),
        "anything b echoed would have reached a by now"
    );
    assert_eq!(*seen_a.lock().unwrap(), ["shared:Local", "private:Local"]);
    assert_eq!(*seen_b.lock().unwrap(), ["shared:Remote"]);
    a.set_transport(None);
    b.set_transport(None);
}

// --- #[on_event] on the global bus -------------------------------------

static MACRO_SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[on_event("macro.name.*", ack)]
fn takes_the_name(event: &str) {
    MACRO_SEEN.lock().unwrap().push(format!("name {event}"));
}

#[on_event("macro.job", ack = "macro.job.handled")]
fn takes_name_and_payload(event: &str, job: &JobView) -> Result<(), String> {
    MACRO_SEEN
        .lock()
        .unwrap()
        .push(format!("{event} {} {}", job.id, job.name));
    Ok(())
}

#[on_event("re:macro\\.once\\.\\d+", once, ack)]
fn takes_nothing_once() {
    MACRO_SEEN.lock().unwrap().push("once".to_owned());
}

#[on_event("macro.fails", ack)]
fn returns_an_error(_: &u32) -> Result<(), std::fmt::Error> {
    Err(std::fmt::Error)
}

fn macro_seen_with(prefix: &str) -> Vec<String> {
    MACRO_SEEN
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.starts_with(prefix))
        .cloned()
        .collect()
}

#[test]
fn on_event_handlers_are_registered_without_a_call() {
    event::notify_and_wait("macro.name.x", (), None, LONG).unwrap();
    assert_eq!(macro_seen_with("name"), ["name macro.name.x"]);

    // The same handler for a local payload of another type (converted), and
    // for an encoded payload from another process.
    let job = Job {
        id: 9,
        name: "nine".into(),
    };
    let waiter = event::wait_for("macro.job.handled").unwrap();
    event::notify("macro.job", job.clone());
    waiter.wait(LONG).unwrap();
    let waiter = event::wait_for("macro.job.handled").unwrap();
    let encoded = Event::new("macro.job", job).encode_payload().unwrap();
    event::bus().deliver(Event::from_remote("macro.job", encoded));
    waiter.wait(LONG).unwrap();
    assert_eq!(
        macro_seen_with("macro.job"),
        ["macro.job 9 nine", "macro.job 9 nine"]
    );

    event::notify_and_wait("macro.once.1", (), None, LONG).unwrap();
    let second = event::notify_and_wait("macro.once.2", (), None, Duration::from_millis(50));
    assert!(event::bus().flush(LONG));
    assert!(second.is_err(), "a `once` handler ran twice");
    assert_eq!(macro_seen_with("once"), ["once"]);

    let ack = event::notify_and_wait("macro.fails", 1_u32, None, LONG).unwrap();
    assert!(ack.payload::<Completion>().unwrap().error.is_some());
}

#[test]
fn blocking_waits_inside_a_handler_fail_fast_instead_of_hanging() {
    let bus = EventBus::new();
    let inner = bus.clone();
    let (tx, rx) = mpsc::channel();
    bus.register("inside", move |_: &Event| {
        let waited = inner.notify_and_wait("other", (), None, LONG);
        tx.send((
            waited.map(|_| ()).map_err(|e| e.to_string()),
            inner.flush(LONG),
        ))
        .unwrap();
    })
    .unwrap();
    bus.notify("inside", ());
    let (waited, flushed) = rx.recv_timeout(LONG).unwrap();
    assert!(waited.unwrap_err().contains("dispatcher thread"));
    assert!(!flushed);
}
