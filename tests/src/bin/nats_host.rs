//! One process of a service whose events go over NATS (config from
//! `SERVE_COMMON_CONFIG`), driven line by line on stdin by tests/nats.rs:
//!
//! - `notify NAME TEXT`, `local NAME TEXT`: notify (local-only) a string;
//! - `try NAME BYTES`: `try_notify` a payload of BYTES bytes;
//! - `set PATH VALUE`: a runtime config set;
//! - `flood NAME COUNT`: notifies COUNT events `NAME` carrying
//!   `<pid>-<n>`, n from 0, as fast as it can;
//! - `tally TIMEOUT_S SENDERS COUNT`: waits (at most TIMEOUT_S) until the
//!   `bulk.*` handler has seen `COUNT` events from each of SENDERS
//!   (comma-separated pids), then prints `tally <pid> seen=.. missing=..
//!   dups=.. disorder=..` (disorder: events from one sender that came
//!   after a later one);
//! - `stats`: the link's counters;
//! - `health`: the link's health check and details;
//! - `quit`.
//!
//! It prints `ready <pid> <ipc address>` once connected to NATS (or
//! `started` if `--no-wait`), `got <pid> <event> <text>` for every `app.*`
//! event, `config <pid> <path>=<value>` for `config:app.*` changes.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serve_common::config::ConfigChange;
use serve_common::event::{self, nats};
use serve_common::on_event;

#[on_event("app.*")]
fn app_event(event: &str, text: &String) {
    println!("got {} {event} {text}", std::process::id());
}

#[on_event("config:app.*")]
fn app_config(event: &str, change: &ConfigChange) {
    let value = change
        .new
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_default();
    println!(
        "config {} {}={value}",
        std::process::id(),
        event.trim_start_matches("config:")
    );
}

/// Per sender pid: how many times each number arrived, and the last one.
#[derive(Default)]
struct Sender {
    times: HashMap<u64, u32>,
    /// Distinct numbers seen: what a waiting `tally` checks.
    distinct: u64,
    last: Option<u64>,
    disorder: u64,
}

static BULK: Mutex<Option<HashMap<String, Sender>>> = Mutex::new(None);
static BULK_CHANGED: Condvar = Condvar::new();
/// Distinct events seen, and what a waiting `tally` wants: the handler
/// wakes it at the target (and every 1,024), not at every event.
static DISTINCT: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(u64::MAX);

#[on_event("bulk.*")]
#[allow(clippy::ptr_arg)] // the payload type is `String`
fn bulk_event(text: &String) {
    let Some((sender, n)) = text.split_once('-') else {
        return;
    };
    let Ok(n) = n.parse::<u64>() else { return };
    let mut bulk = BULK.lock().unwrap();
    let entry = bulk
        .get_or_insert_with(HashMap::new)
        .entry(sender.to_owned())
        .or_default();
    let times = entry.times.entry(n).or_default();
    let mut wake = false;
    if *times == 0 {
        entry.distinct += 1;
        let distinct = DISTINCT.fetch_add(1, Ordering::Relaxed) + 1;
        wake = distinct.is_multiple_of(1_024) || distinct >= TARGET.load(Ordering::Relaxed);
    }
    *times += 1;
    if entry.last.is_some_and(|last| n < last) {
        entry.disorder += 1;
    }
    entry.last = Some(n);
    if wake {
        BULK_CHANGED.notify_all();
    }
}

/// `seen missing dups disorder` for `count` numbers from each of `senders`.
/// The first few runs of missing numbers, `sender:from-to,...`: what a
/// failing test shows.
fn gaps(senders: &[&str], count: u64) -> String {
    let bulk = BULK.lock().unwrap();
    let mut runs = Vec::new();
    for sender in senders {
        let Some(entry) = bulk.as_ref().and_then(|b| b.get(*sender)) else {
            runs.push(format!("{sender}:all"));
            continue;
        };
        let mut n = 0;
        while n < count && runs.len() < 8 {
            if entry.times.contains_key(&n) {
                n += 1;
                continue;
            }
            let from = n;
            while n < count && !entry.times.contains_key(&n) {
                n += 1;
            }
            runs.push(format!("{sender}:{from}-{}", n - 1));
        }
    }
    runs.join(",")
}

fn tally(senders: &[&str], count: u64) -> (u64, u64, u64, u64) {
    let bulk = BULK.lock().unwrap();
    let empty = HashMap::new();
    let bulk = bulk.as_ref().unwrap_or(&empty);
    let (mut seen, mut missing, mut dups, mut disorder) = (0, 0, 0, 0);
    for sender in senders {
        let Some(entry) = bulk.get(*sender) else {
            missing += count;
            continue;
        };
        disorder += entry.disorder;
        for n in 0..count {
            match entry.times.get(&n).copied().unwrap_or(0) {
                0 => missing += 1,
                times => {
                    seen += 1;
                    dups += u64::from(times - 1);
                }
            }
        }
    }
    (seen, missing, dups, disorder)
}

/// One per service: each `job.*` event runs here or in another process,
/// not both. Appends the payload to `jobs.log` (in the current directory)
/// after a millisecond of "work", so a test can count across processes,
/// a killed one included.
#[on_event("job.*", one_per_service)]
#[allow(clippy::ptr_arg)] // the payload type is `String`
fn job(text: &String) {
    std::thread::sleep(Duration::from_millis(1));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("jobs.log")
        .unwrap();
    std::io::Write::write_all(&mut log, format!("{text}\n").as_bytes()).unwrap();
}

/// The link's own news: connected, disconnected, errors.
#[on_event("nats:*")]
fn nats_news(event: &str, text: &String) {
    println!("nats {} {event} {text}", std::process::id());
}

#[serve_common::main(logging = true)]
async fn main() {
    // `--ipc`: no NATS; events go over IPC.
    let no_wait = std::env::args().any(|a| a == "--no-wait" || a == "--ipc");
    let address = serve_common::ipc::address().unwrap_or_default();
    if no_wait {
        println!("started {} {address}", std::process::id());
    } else {
        let link = nats::link().expect("events.nats.url is set");
        let connected = event::wait_for(nats::CONNECTED_EVENT).unwrap();
        if !link.ready() {
            connected
                .wait(std::time::Duration::from_secs(30))
                .expect("connected to NATS");
        }
        println!("ready {} {address}", std::process::id());
    }
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("notify"), Some(name), text) => {
                event::notify(name.to_owned(), text.unwrap_or("").to_owned())
            }
            (Some("local"), Some(name), text) => {
                event::notify_local(name.to_owned(), text.unwrap_or("").to_owned())
            }
            (Some("try"), Some(name), Some(size)) => {
                let text = "x".repeat(size.parse().unwrap());
                match event::try_notify(name.to_owned(), text) {
                    Ok(()) => println!("tried ok"),
                    Err(error) => println!("tried error {error}"),
                }
            }
            (Some("set"), Some(path), Some(value)) => {
                serve_common::config::config().set(path, value).unwrap();
            }
            (Some("flood"), Some(name), Some(count)) => {
                let pid = std::process::id();
                for n in 0..count.parse::<u64>().unwrap() {
                    event::notify(name.to_owned(), format!("{pid}-{n}"));
                }
                println!("flooded {pid}");
            }
            (Some("tally"), Some(timeout), Some(rest)) => {
                let (senders, count) = rest.split_once(' ').unwrap();
                let senders: Vec<&str> = senders.split(',').collect();
                let count: u64 = count.parse().unwrap();
                let deadline = Instant::now() + Duration::from_secs(timeout.parse().unwrap());
                let mut result = tally(&senders, count);
                while result.1 > 0 && Instant::now() < deadline {
                    let bulk = BULK.lock().unwrap();
                    let left = deadline.saturating_duration_since(Instant::now());
                    drop(
                        BULK_CHANGED
                            .wait_timeout(bulk, left.min(Duration::from_millis(500)))
                            .unwrap(),
                    );
                    result = tally(&senders, count);
                }
                let (seen, missing, dups, disorder) = result;
                println!(
                    "tally {} seen={seen} missing={missing} dups={dups} disorder={disorder} gaps={}",
                    std::process::id(),
                    gaps(&senders, count)
                );
            }
            (Some("health"), _, _) => {
                let link = nats::link().unwrap();
                println!(
                    "health {:?} {}",
                    link.health(),
                    serde_json::Value::Object(link.health_details())
                );
            }
            (Some("stats"), _, _) => {
                let link = nats::link().unwrap();
                println!(
                    "stats connected={} sent={} received={} dropped={} oversize={} duplicates={} buffered={} malformed={} resent={} lag={} dropped_incoming={} error={}",
                    link.connected(),
                    link.sent(),
                    link.received(),
                    link.dropped(),
                    link.oversize(),
                    link.duplicates(),
                    link.buffered(),
                    link.malformed(),
                    link.resent(),
                    link.lag(),
                    link.dropped_incoming(),
                    link.last_error().unwrap_or_default().replace(' ', "_"),
                );
            }
            (Some("quit"), _, _) => break,
            _ => println!("unknown command {line:?}"),
        }
    }
}
