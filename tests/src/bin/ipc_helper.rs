//! A process for the IPC tests to start: the server, a parent that starts
//! the server, or a member playing one part. It reads commands on stdin and
//! reports on stdout, one line each, so tests wait on lines, not on time.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use serve_common::config::{self, Config, ConfigChange};
use serve_common::event::{self, Event};
use serve_common::ipc::{self, IpcError, ServerOptions};
use serve_common_tests::ipc_support::{Msg, exchange, pattern};

fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn lines() -> impl Iterator<Item = String> {
    std::io::stdin().lock().lines().map_while(Result::ok)
}

fn wait_for_line(expected: &str) {
    for line in lines() {
        if line.trim() == expected {
            return;
        }
    }
    std::process::exit(3);
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} missing or invalid: {args:?}"))
}

fn main() {
    ipc::run_server_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("parent" | "events")) {
        // The keeper's and the link's log lines, for the tests to read.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
    }
    match args.first().map(String::as_str) {
        Some("parent") => parent(&args),
        Some("exchange") => exchange_mode(&args),
        Some("stall") => stall(&args),
        Some("read") => read(&args),
        Some("big") => big(&args),
        Some("try-join") => try_join(&args),
        Some("events") => events(),
        Some("gaps") => gaps(&args),
        other => panic!("unknown mode {other:?}"),
    }
}

/// Starts the server, reports `server <pid> <address>`, then waits: a
/// `shutdown` line or SIGINT stops the server; end of input leaves it.
fn parent(args: &[String]) {
    let mut options = ServerOptions {
        program: Some(std::env::current_exe().unwrap()),
        ..ServerOptions::default()
    };
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value: u64 = rest.next().and_then(|v| v.parse().ok()).expect("a number");
        match flag.as_str() {
            "--stall-ms" => options.stall_timeout = Duration::from_millis(value),
            "--greeting-ms" => options.greeting_timeout = Duration::from_millis(value),
            "--queue-bytes" => options.queue_bytes = value as usize,
            "--max" => options.max_message = value as usize,
            "--drain-ms" => options.drain_timeout = Duration::from_millis(value),
            "--rejoin-ms" => options.rejoin_window = Duration::from_millis(value),
            other => panic!("unknown flag {other}"),
        }
    }
    let pid = ipc::start_with(options).unwrap();
    let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT]);
    let mut signals = signals.unwrap();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            // The server must still be up: the parent stops it, not ^C.
            let probe = ipc::join_group::<u8>("probe");
            let alive = probe.is_ok()
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
            say(if alive {
                "alive-at-sigint"
            } else {
                "dead-at-sigint"
            });
            ipc::shutdown().unwrap();
            say("stopped");
            std::process::exit(0);
        }
    });
    say(format!("server {pid} {}", ipc::address().unwrap()));
    for line in lines() {
        match line.trim() {
            "shutdown" => {
                ipc::shutdown().unwrap();
                say("stopped");
                return;
            }
            "pid" => say(format!("pid {}", ipc::server_pid().unwrap_or(0))),
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// Joins and receives `n` messages (of anyone), then reports the longest
/// gap between two arrivals.
fn gaps(args: &[String]) {
    let (group, n): (String, u64) = (arg(args, 1), arg(args, 2));
    ipc::setup(None).unwrap();
    let socket = ipc::join_group::<Msg>(&group).unwrap();
    say("joined");
    let mut last: Option<std::time::Instant> = None;
    let mut longest = Duration::ZERO;
    for _ in 0..n {
        socket.recv_bytes().unwrap();
        let now = std::time::Instant::now();
        if let Some(last) = last {
            longest = longest.max(now - last);
        }
        last = Some(now);
    }
    say(format!(
        "gaps {n} max_ms {:.3}",
        longest.as_secs_f64() * 1e3
    ));
}

/// Joins, reports `joined`, waits for `go`, sends `count` messages, then
/// receives until it has `count` from each of `peers` others, in order.
fn exchange_mode(args: &[String]) {
    let (group, count, peers): (String, u64, usize) = (arg(args, 1), arg(args, 2), arg(args, 3));
    ipc::setup(None).unwrap();
    let socket = ipc::join_group::<Msg>(&group).unwrap();
    say("joined");
    wait_for_line("go");
    let total = exchange(&socket, std::process::id(), count, peers);
    say(format!("ok {total}"));
}

/// Joins and never reads until told to `drain`; then counts what is left
/// before the server's close.
fn stall(args: &[String]) {
    let group: String = arg(args, 1);
    ipc::setup(None).unwrap();
    let socket = ipc::join_group::<Msg>(&group).unwrap();
    say("joined");
    wait_for_line("drain");
    let mut n = 0;
    loop {
        match socket.recv_bytes() {
            Ok(_) => n += 1,
            Err(IpcError::Closed) => break,
            Err(error) => panic!("{error}"),
        }
    }
    say(format!("closed after {n}"));
}

/// Receives `n` messages of one sender, checking their order and content.
fn read(args: &[String]) {
    let (group, n): (String, u64) = (arg(args, 1), arg(args, 2));
    ipc::setup(None).unwrap();
    let socket = ipc::join_group::<Msg>(&group).unwrap();
    say("joined");
    for seq in 0..n {
        let msg = socket.recv().unwrap();
        assert_eq!(msg.seq, seq, "lost or reordered");
        assert_eq!(msg.body, pattern(msg.from, msg.seq, msg.body.len()));
    }
    say(format!("ok {n}"));
}

/// Sends `n` messages of `size` bytes with a recognizable pattern.
fn big(args: &[String]) {
    let (group, id, n, size): (String, u32, u64, usize) =
        (arg(args, 1), arg(args, 2), arg(args, 3), arg(args, 4));
    ipc::setup(None).unwrap();
    let socket = ipc::join_group::<Msg>(&group).unwrap();
    say("joined");
    wait_for_line("go");
    for seq in 0..n {
        socket
            .send(&Msg {
                from: id,
                seq,
                body: pattern(id, seq, size),
            })
            .unwrap();
    }
    say("sent");
    wait_for_line("exit");
}

/// Tries to join and read; reports `refused` when the server closes it.
fn try_join(args: &[String]) {
    let group: String = arg(args, 1);
    ipc::setup(None).unwrap();
    match ipc::join_group::<u8>(&group).and_then(|s| s.recv_bytes()) {
        Err(IpcError::Refused) => say("refused"),
        Ok(_) => say("accepted"),
        Err(error) => say(format!("error {error}")),
    }
}

/// Sequence numbers as compact ranges: `0-4,7,9-12`.
fn ranges(values: &std::collections::BTreeSet<u64>) -> String {
    let mut out = Vec::new();
    let mut iter = values.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    if out.is_empty() {
        "-".to_owned()
    } else {
        out.join(",")
    }
}

/// What an events process saw of `fault.seq`: as a receiver, every
/// sequence number (copies counted); as the sender, how its link treated
/// each one.
#[derive(Default)]
struct Seen {
    received: std::collections::BTreeSet<u64>,
    copies: u64,
    watch: Option<u64>,
    /// The sender's classes, from its link's counters read right after
    /// each event was published (on the dispatcher, before the next).
    before: std::collections::BTreeSet<u64>,
    buffered: std::collections::BTreeSet<u64>,
    dropped: std::collections::BTreeSet<u64>,
    after: std::collections::BTreeSet<u64>,
    counters: (u64, u64),
    /// The config's own events this process published (a rejoin's sync
    /// request, the answers to others'): buffered, and dropped (never, by
    /// design).
    config_buffered: u64,
    config_dropped: u64,
}

static SEEN: std::sync::Mutex<Option<Seen>> = std::sync::Mutex::new(None);
static BLOCKED: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

fn seen<R>(f: impl FnOnce(&mut Seen) -> R) -> R {
    f(SEEN.lock().unwrap().get_or_insert_with(Seen::default))
}

/// A process of an events test: config from `SERVCOM_TEST_CONFIG`
/// (watched; `[events.ipc]` sets the link's options), events over IPC.
/// Prints `handled <event> <payload>` for `test.*` and `config:*` events,
/// `lost` and `rejoined ...` when its link goes down and comes back.
/// Commands: `notify <name> <int>`, `notify-values`, `set <path> <int>`,
/// `get <path>`, `ping <n>`, `stream <count> <pace_us>`, `watch <n>`,
/// `report`, `stats`, `health`, `try-notify-big <bytes>`,
/// `notify-big <name> <bytes>`, `block`, `unblock`, `wait-received <n>`,
/// `notify-deep-set <keys>`, `notify-set <path> <int> <clock ahead, s>`.
fn events() {
    ipc::setup(None).unwrap();
    let file = std::env::var("SERVCOM_TEST_CONFIG").unwrap();
    let config = config::init(
        Config::builder()
            .path(Path::new(&file))
            .no_env()
            .watch(true),
    )
    .unwrap();
    let bus = event::bus();
    bus.on("test.*")
        .call(|e: &Event| {
            let value = e
                .payload::<i64>()
                .map(|v| v.to_string())
                .unwrap_or_else(|e| e.to_string());
            say(format!("handled {} {value}", e.name()));
        })
        .unwrap();
    bus.on("big.*")
        .call(|e: &Event| say(format!("handled {}", e.name())))
        .unwrap();
    bus.on("block")
        .call(|_: &Event| {
            let mut blocked = BLOCKED.0.lock().unwrap();
            *blocked = true;
            say("blocked");
            while *blocked {
                blocked = BLOCKED.1.wait(blocked).unwrap();
            }
        })
        .unwrap();
    bus.on("config:*")
        .call_typed(|name: &str, change: &ConfigChange| {
            say(format!(
                "handled {name} {}",
                change
                    .new
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ));
        })
        .unwrap();
    bus.on("values")
        .call_data(|value: &toml::Value| {
            say(format!(
                "values {}",
                toml::to_string(value).unwrap().replace('\n', "|")
            ))
        })
        .unwrap();
    bus.on(event::LINK_LOST_EVENT)
        .call(|_: &Event| say("lost"))
        .unwrap();
    bus.on(event::LINK_REJOINED_EVENT)
        .call_data(|r: &event::IpcRejoined| {
            say(format!(
                "rejoined down_ms={} missed={} replayed={} buffered={} dropped={} server={}",
                r.down_ms,
                r.cut_off_missed.map_or("-".to_owned(), |m| m.to_string()),
                r.replayed,
                r.buffered,
                r.dropped,
                r.server_pid
            ))
        })
        .unwrap();
    let options = event::IpcOptions::from_config(config).unwrap();
    let link = event::enable_ipc_with(options).unwrap();
    // The config's own events move the same counters: taken out of the
    // next `fault.seq`'s delta.
    let config_link = link;
    bus.on("config_s*") // config::SET_EVENT, config::SYNC_EVENT
        .call(move |e: &Event| {
            if e.origin() != event::Origin::Local {
                return;
            }
            seen(|seen| {
                let now = (config_link.buffered(), config_link.dropped_outgoing());
                let before = std::mem::replace(&mut seen.counters, now);
                seen.config_buffered += now.0 - before.0;
                seen.config_dropped += now.1 - before.1;
            })
        })
        .unwrap();
    bus.on("fault.seq")
        .call(move |e: &Event| {
            let seq = *e.payload::<u64>().unwrap();
            seen(|seen| {
                if e.origin() == event::Origin::Local {
                    let now = (link.buffered(), link.dropped_outgoing());
                    let before = std::mem::replace(&mut seen.counters, now);
                    let class = if now.1 > before.1 {
                        &mut seen.dropped
                    } else if now.0 > before.0 {
                        &mut seen.buffered
                    } else if link.rejoins() > 0 {
                        &mut seen.after
                    } else {
                        &mut seen.before
                    };
                    class.insert(seq);
                    return;
                }
                if !seen.received.insert(seq) {
                    seen.copies += 1;
                }
                if seen.watch == Some(seen.received.len() as u64) {
                    say(format!("reached {}", seen.received.len()));
                }
            })
        })
        .unwrap();
    say("ready");
    for line in lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["notify", name, value] => {
                event::notify(name.to_string(), value.parse::<i64>().unwrap())
            }
            ["notify-values"] => event::notify("values", all_toml_values()),
            ["set", path, value] => config.set(path, value.parse::<i64>().unwrap()).unwrap(),
            ["get", path] => say(format!(
                "value {}",
                config.get::<toml::Value>(path).unwrap()
            )),
            ["ping", n] => {
                assert!(bus.flush(Duration::from_secs(10)));
                say(format!("pong {n}"));
            }
            ["stream", count, pace] => {
                let (count, pace): (u64, u64) = (count.parse().unwrap(), pace.parse().unwrap());
                std::thread::spawn(move || {
                    for seq in 0..count {
                        event::notify("fault.seq", seq);
                        if pace > 0 {
                            std::thread::sleep(Duration::from_micros(pace));
                        }
                    }
                    assert!(event::bus().flush(Duration::from_secs(30)));
                    say("streamed");
                });
            }
            ["watch", n] => {
                let n: u64 = n.parse().unwrap();
                seen(|seen| {
                    seen.watch = Some(n);
                    if seen.received.len() as u64 >= n {
                        say(format!("reached {}", seen.received.len()));
                    }
                });
            }
            ["report"] => seen(|seen| {
                say(format!(
                    "report received={} copies={} before={} buffered={} dropped={} after={} config_buffered={} config_dropped={}",
                    ranges(&seen.received),
                    seen.copies,
                    ranges(&seen.before),
                    ranges(&seen.buffered),
                    ranges(&seen.dropped),
                    ranges(&seen.after),
                    seen.config_buffered,
                    seen.config_dropped
                ))
            }),
            ["stats"] => say(format!(
                "stats up={} sent={} received={} buffered={} dropped_outgoing={} dropped_incoming={} rejoins={} missed={} backlog_bytes={}",
                link.is_up(),
                link.sent(),
                link.received(),
                link.buffered(),
                link.dropped_outgoing(),
                link.dropped_incoming(),
                link.rejoins(),
                link.missed(),
                bus.remote_backlog_bytes()
            )),
            ["health"] => match link.health() {
                Ok(()) => say("health ok"),
                Err(error) => say(format!("health err {error}")),
            },
            ["try-notify-big", bytes] => {
                let body = serde_bytes::ByteBuf::from(vec![7_u8; bytes.parse().unwrap()]);
                match event::try_notify("big.try", body) {
                    Ok(()) => say("try-notify ok"),
                    Err(error) => say(format!("try-notify err {error}")),
                }
            }
            ["notify-big", name, bytes] => {
                let body = serde_bytes::ByteBuf::from(vec![7_u8; bytes.parse().unwrap()]);
                event::notify(name.to_string(), body);
            }
            ["notify-deep-set", keys] => {
                let keys: usize = keys.parse().unwrap();
                let set = config::ConfigSet {
                    path: vec!["k"; keys].join("."),
                    value: Some(toml::Value::Integer(1)),
                    clock: u64::MAX / 2,
                    origin: 7,
                };
                event::notify(config::SET_EVENT, set);
            }
            ["notify-set", path, value, ahead_s] => {
                // A set as from another process whose clock is ahead.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64;
                let set = config::ConfigSet {
                    path: path.to_string(),
                    value: Some(toml::Value::Integer(value.parse().unwrap())),
                    clock: now + ahead_s.parse::<u64>().unwrap() * 1_000_000_000,
                    origin: 7,
                };
                event::notify(config::SET_EVENT, set);
            }
            ["get-pid"] => say(format!("pid {}", std::process::id())),
            ["block"] => event::notify_local("block", ()),
            ["unblock"] => {
                *BLOCKED.0.lock().unwrap() = false;
                BLOCKED.1.notify_all();
            }
            ["wait-received", n] => {
                // The link counts as it reads; nothing else tells.
                let n: u64 = n.parse().unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while link.received() < n && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                say(format!("received {}", link.received()));
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// Every `toml::Value` variant, datetimes of every kind included.
fn all_toml_values() -> toml::Value {
    let text = r#"
string = "text ✓"
integer = -42
float = 2.5
boolean = true
offset_datetime = 1979-05-27T07:32:00-08:00
local_datetime = 1979-05-27T07:32:00
local_date = 1979-05-27
local_time = 07:32:00
array = [1, "two", 3.0]
[table]
nested = { deep = [true] }
"#;
    toml::Value::Table(text.parse().unwrap())
}
