//! One process of a service whose events go over NATS (config from
//! `SERVE_COMMON_CONFIG`), driven line by line on stdin by tests/nats.rs:
//!
//! - `notify NAME TEXT`, `local NAME TEXT`: notify (local-only) a string;
//! - `try NAME BYTES`: `try_notify` a payload of BYTES bytes;
//! - `set PATH VALUE`: a runtime config set;
//! - `stats`: the link's counters;
//! - `quit`.
//!
//! It prints `ready <pid> <ipc address>` once connected to NATS (or
//! `started` if `--no-wait`), `got <pid> <event> <text>` for every `app.*`
//! event, `config <pid> <path>=<value>` for `config:app.*` changes.

use std::io::BufRead;

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

/// The link's own news: connected, disconnected, errors.
#[on_event("nats:*")]
fn nats_news(event: &str, text: &String) {
    println!("nats {} {event} {text}", std::process::id());
}

#[serve_common::main(logging = true)]
async fn main() {
    let no_wait = std::env::args().any(|a| a == "--no-wait");
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
            (Some("stats"), _, _) => {
                let link = nats::link().unwrap();
                println!(
                    "stats connected={} sent={} received={} dropped={} oversize={} duplicates={} error={}",
                    link.connected(),
                    link.sent(),
                    link.received(),
                    link.dropped(),
                    link.oversize(),
                    link.duplicates(),
                    link.last_error().unwrap_or_default().replace(' ', "_"),
                );
            }
            (Some("quit"), _, _) => break,
            _ => println!("unknown command {line:?}"),
        }
    }
}
