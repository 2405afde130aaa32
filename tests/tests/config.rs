//! The config: real files, a real child process for environment layers,
//! events awaited on real buses.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::Deserialize;
use serve_common::config::{ChangeSource, Config, ConfigChange, ConfigError, ConfigSet, SET_EVENT};
use serve_common::event::{Event, EventBus};
use serve_common_tests::logs;

const LONG: Duration = Duration::from_secs(10);

/// Writes like an editor: a new file renamed over the old one, so a
/// watcher never reads a half-written file.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn config_on(bus: &EventBus, path: &Path) -> Config {
    Config::builder()
        .path(path)
        .no_env()
        .event_bus(bus.clone())
        .build()
        .unwrap()
}

fn watched_config_on(bus: &EventBus, path: &Path) -> Config {
    let config = config_on(bus, path);
    config.watch().unwrap();
    config
}

#[derive(Debug, Deserialize, PartialEq)]
struct Logging {
    level: String,
    targets: BTreeMap<String, String>,
}

#[test]
fn typed_reads_sections_defaults_and_errors_that_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[a.b]\nc = \"deep\"\nn = 3\n[logging]\nlevel = \"INFO\"\n[logging.targets]\n\"my_app::db\" = \"trace\"\n",
    );
    let config = config_on(&EventBus::new(), &path);
    assert_eq!(config.get::<String>("a.b.c").unwrap(), "deep");
    assert_eq!(config.get::<u8>("a.b.n").unwrap(), 3);
    let logging: Logging = config.get("logging").unwrap();
    assert_eq!(logging.level, "INFO");
    assert_eq!(logging.targets["my_app::db"], "trace");
    assert_eq!(config.get_or("a.b.missing", 7_u32), 7);
    assert_eq!(config.get_opt::<u32>("nope.nope").unwrap(), None);
    assert!(config.contains("a.b") && !config.contains("a.x"));

    let missing = config.get::<String>("a.b.zzz").unwrap_err();
    assert!(matches!(missing, ConfigError::Missing { .. }));
    assert!(missing.to_string().contains("`a.b.zzz`"), "{missing}");

    let wrong = config.get::<u32>("a.b.c").unwrap_err();
    assert!(matches!(wrong, ConfigError::Type { .. }));
    let text = wrong.to_string();
    assert!(text.contains("`a.b.c`") && text.contains("u32"), "{text}");
    assert!(
        config.get_opt::<u32>("a.b.c").is_err(),
        "a wrong type is not `None`"
    );
    assert_eq!(config.get_or("a.b.c", 5_u32), 5);
}

#[test]
fn a_missing_file_is_an_empty_config_and_bad_toml_is_a_clear_error() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent-config.toml");
    let config = Config::builder()
        .path(&absent)
        .no_env()
        .no_events()
        .build()
        .unwrap();
    assert!(config.snapshot().is_empty());
    assert!(
        !logs.lines_with("absent-config.toml").is_empty(),
        "a warning names the file"
    );

    let path = write(dir.path(), "[server]\nbind = \n");
    let error = Config::builder()
        .path(&path)
        .no_env()
        .no_events()
        .build()
        .unwrap_err();
    assert!(matches!(error, ConfigError::Parse { .. }));
    let text = error.to_string();
    assert!(
        text.contains("config.toml") && text.contains("line 2"),
        "{text}"
    );
}

#[test]
fn set_creates_tables_and_notifies_old_and_new() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(&bus, &write(dir.path(), "[x]\ny = 1\n"));

    let waiter = bus.wait_for("config:x.y").unwrap();
    config.set("x.y", 2).unwrap();
    let event = waiter.wait(LONG).unwrap();
    assert!(
        event.is_local_only(),
        "each process notifies its own changes"
    );
    let change = event.payload::<ConfigChange>().unwrap();
    assert_eq!(change.path, "x.y");
    assert_eq!(change.old, Some(toml::Value::Integer(1)));
    assert_eq!(change.new, Some(toml::Value::Integer(2)));
    assert_eq!(change.source, ChangeSource::Set);

    let waiter = bus.wait_for("config:new.table.key").unwrap();
    config.set("new.table.key", "v").unwrap();
    let change = waiter.wait(LONG).unwrap();
    let change = change.payload::<ConfigChange<String>>().unwrap();
    assert_eq!(
        (change.old.clone(), change.new.clone()),
        (None, Some("v".to_owned()))
    );
    assert_eq!(config.get::<String>("new.table.key").unwrap(), "v");

    // The same value again changes nothing and notifies nothing.
    let waiter = bus.wait_for("config:x.y").unwrap();
    config.set("x.y", 2).unwrap();
    assert!(bus.flush(LONG));
    assert!(waiter.try_take().is_none());

    let error = config.set("x.y.z", 1).unwrap_err();
    assert!(matches!(error, ConfigError::NotATable { .. }), "{error}");
    assert!(error.to_string().contains("`x.y`"), "{error}");
    assert_eq!(
        config.get::<i64>("x.y").unwrap(),
        2,
        "a failed set changes nothing"
    );
    assert!(matches!(
        config.set("a..b", 1),
        Err(ConfigError::BadPath { .. })
    ));
}

#[test]
fn unset_lets_the_file_show_through() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(&bus, &write(dir.path(), "level = \"INFO\"\n"));
    config.set("level", "DEBUG").unwrap();
    assert!(bus.flush(LONG), "the set's own event is out of the way");
    let waiter = bus.wait_for("config:level").unwrap();
    assert!(config.unset("level").unwrap());
    let change = waiter.wait(LONG).unwrap();
    let change = change.payload::<ConfigChange<String>>().unwrap();
    assert_eq!(change.new.as_deref(), Some("INFO"));
    assert_eq!(change.source, ChangeSource::Unset);
    assert!(!config.unset("level").unwrap());
}

#[test]
fn reload_notifies_one_local_event_per_changed_leaf_and_keeps_runtime_sets() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[a]\nx = 1\ny = 2\nz = 3\n[b]\nkeep = true\n");
    let config = config_on(&bus, &path);
    config.set("b.runtime", "set at run time").unwrap();
    assert!(bus.flush(LONG), "the set's own event is out of the way");

    let (tx, rx) = mpsc::channel();
    bus.register("config:*", move |e: &Event| {
        let change = e.payload::<ConfigChange>().unwrap().into_owned();
        tx.send((e.name().to_owned(), e.is_local_only(), change))
            .unwrap();
    })
    .unwrap();
    assert!(bus.flush(LONG));
    std::fs::write(
        &path,
        "[a]\nx = 1\ny = 20\n[b]\nkeep = true\n[c]\nnew = \"n\"\n",
    )
    .unwrap();
    config.reload().unwrap();
    assert!(bus.flush(LONG));
    let events: Vec<_> = rx.try_iter().collect();
    let names: Vec<_> = events.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, ["config:a.y", "config:a.z", "config:c.new"]);
    assert!(
        events
            .iter()
            .all(|(_, local_only, c)| *local_only && c.source == ChangeSource::Reload)
    );
    assert_eq!(events[0].2.old, Some(toml::Value::Integer(2)));
    assert_eq!(events[0].2.new, Some(toml::Value::Integer(20)));
    assert_eq!(events[1].2.new, None);
    assert_eq!(
        config.get::<String>("b.runtime").unwrap(),
        "set at run time"
    );
}

/// The newest intent wins, key by key: a runtime set survives edits of
/// other keys, and an edit of its key made after it replaces it.
#[test]
fn a_runtime_set_survives_other_edits_and_gives_way_to_a_newer_edit_of_its_key() {
    let logs = logs();
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "level = \"INFO\"\nother = 1\n");
    let config = config_on(&bus, &path);
    config.set("level", "DEBUG").unwrap();
    std::fs::write(&path, "level = \"INFO\"\nother = 2\n").unwrap();
    config.reload().unwrap();
    assert_eq!(config.get::<String>("level").unwrap(), "DEBUG");
    assert_eq!(config.get::<i64>("other").unwrap(), 2);

    assert!(bus.flush(LONG), "the set's own event is out of the way");
    let waiter = bus.wait_for("config:level").unwrap();
    let told = bus.wait_for(SET_EVENT).unwrap();
    std::fs::write(&path, "level = \"WARNING\"\nother = 2\n").unwrap();
    config.reload().unwrap();
    assert_eq!(config.get::<String>("level").unwrap(), "WARNING");
    // The others are told, so they agree even if they read the file
    // differently: an unset stamped as the file's.
    let told = told.wait(LONG).unwrap();
    let told = told.payload::<ConfigSet>().unwrap();
    assert_eq!(
        (told.path.as_str(), told.value.clone(), told.origin),
        ("level", None, u64::MAX)
    );
    let change = waiter.wait(LONG).unwrap();
    let change = change.payload::<ConfigChange<String>>().unwrap();
    assert_eq!(
        (change.old.as_deref(), change.new.as_deref(), change.source),
        (Some("DEBUG"), Some("WARNING"), ChangeSource::Reload)
    );
    assert!(
        !logs
            .lines_with("the file's new value of `level` replaced the one set at run time")
            .is_empty()
    );
    // A process that asks for the runtime sets later learns the edit too:
    // it travels as an unset stamped with the file's modification time.
    let sets = bus.wait_for(SET_EVENT).unwrap();
    bus.deliver(Event::from_remote(
        serve_common::config::SYNC_EVENT,
        Event::new("", ()).encode_payload().unwrap(),
    ));
    let resent = sets.wait(LONG).unwrap();
    let resent = resent.payload::<ConfigSet>().unwrap();
    assert_eq!(
        (resent.path.as_str(), resent.value.clone()),
        ("level", None)
    );
    // And a set after the edit wins over the file until the key is edited again.
    config.set("level", "ERROR").unwrap();
    std::fs::write(&path, "level = \"WARNING\"\nother = 3\n").unwrap();
    config.reload().unwrap();
    assert_eq!(config.get::<String>("level").unwrap(), "ERROR");
}

#[test]
fn bad_toml_on_reload_keeps_the_old_config_and_the_next_good_edit_applies() {
    let logs = logs();
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[svc]\nname = \"before\"\n");
    let config = config_on(&bus, &path);
    let (tx, rx) = mpsc::channel();
    bus.register("config:svc.*", move |e: &Event| {
        tx.send(e.name().to_owned()).unwrap()
    })
    .unwrap();

    std::fs::write(&path, "[svc]\nname = \"broken\n").unwrap();
    let error = config.reload().unwrap_err();
    assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
    assert_eq!(config.get::<String>("svc.name").unwrap(), "before");
    assert!(!logs.lines_with("keeping the previous config").is_empty());

    std::fs::write(&path, "[svc]\nname = \"after\"\n").unwrap();
    config.reload().unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "config:svc.name");
    assert_eq!(config.get::<String>("svc.name").unwrap(), "after");
}

#[test]
fn watching_reloads_a_real_edit() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "greeting = \"hello\"\n");
    let config = watched_config_on(&bus, &path);
    let waiter = bus.wait_for("config:greeting").unwrap();
    replace(&path, "greeting = \"bonjour\"\n");
    let event = waiter.wait(LONG).unwrap();
    assert_eq!(
        event
            .payload::<ConfigChange<String>>()
            .unwrap()
            .new
            .as_deref(),
        Some("bonjour")
    );
    assert_eq!(config.get::<String>("greeting").unwrap(), "bonjour");
}

#[test]
fn a_watched_file_with_bad_toml_keeps_the_old_config_until_a_good_edit() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "port = 1\n");
    let config = watched_config_on(&bus, &path);
    let (tx, rx) = mpsc::channel();
    bus.register("config:*", move |e: &Event| {
        tx.send(e.payload::<ConfigChange<i64>>().unwrap().into_owned())
            .unwrap();
    })
    .unwrap();
    let failed = bus
        .wait_for(serve_common::config::RELOAD_FAILED_EVENT)
        .unwrap();
    replace(&path, "port = \n");
    let failure = failed.wait(LONG).unwrap();
    let failure = failure
        .payload::<serve_common::config::ReloadFailure>()
        .unwrap();
    assert!(failure.error.contains("TOML"), "{}", failure.error);
    assert_eq!(
        config.get::<i64>("port").unwrap(),
        1,
        "the old config stays"
    );
    replace(&path, "port = 3\n");
    let change = rx.recv_timeout(LONG).unwrap();
    // Diffed against the last good config: nothing of the bad file leaked.
    assert_eq!(
        (change.path.as_str(), change.old, change.new),
        ("port", Some(1), Some(3))
    );
    assert_eq!(config.get::<i64>("port").unwrap(), 3);
}

#[test]
fn a_set_travels_as_one_event_with_the_value_written() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(&bus, &write(dir.path(), "[t]\nfrom_file = 1\n"));
    let sets = bus.wait_for(SET_EVENT).unwrap();
    // Unchanged here, yet other processes must pin it too.
    config.set("t.from_file", 1).unwrap();
    let set = sets.wait(LONG).unwrap();
    assert!(
        !set.is_local_only(),
        "sets go to the service's other processes"
    );
    let set = set.payload::<ConfigSet>().unwrap();
    assert_eq!(
        (set.path.as_str(), set.value.clone()),
        ("t.from_file", Some(toml::Value::Integer(1)))
    );

    let unsets = bus.wait_for(SET_EVENT).unwrap();
    config.unset("t.from_file").unwrap();
    assert_eq!(
        unsets
            .wait(LONG)
            .unwrap()
            .payload::<ConfigSet>()
            .unwrap()
            .value,
        None
    );
}

/// Now, on the clock config stamps use (nanoseconds since the epoch).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A set from another process, newer than any before it.
fn remote_set(path: &str, value: Option<toml::Value>) -> Event {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CLOCK: AtomicU64 = AtomicU64::new(0);
    let clock = loop {
        let last = CLOCK.load(Ordering::Relaxed);
        let next = now_ns().max(last + 1);
        if CLOCK
            .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            break next;
        }
    };
    remote_set_at(path, value, clock)
}

fn remote_set_at(path: &str, value: Option<toml::Value>, clock: u64) -> Event {
    let set = ConfigSet {
        path: path.to_owned(),
        value,
        clock,
        origin: 1,
    };
    Event::from_remote(
        SET_EVENT,
        Event::new(SET_EVENT, set).encode_payload().unwrap(),
    )
}

#[test]
fn a_set_from_another_process_is_applied_and_notified_once_locally() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(&bus, &write(dir.path(), "[logging]\nlevel = \"INFO\"\n"));
    let (tx, rx) = mpsc::channel();
    let reader = config.clone();
    bus.register("config:*", move |e: &Event| {
        // Handlers see the new value already.
        let now: String = reader.get("logging.level").unwrap();
        tx.send((e.name().to_owned(), e.is_local_only(), now))
            .unwrap();
    })
    .unwrap();
    bus.deliver(remote_set(
        "logging.level",
        Some(toml::Value::String("DEBUG".into())),
    ));
    // The same set again changes nothing: no second event.
    bus.deliver(remote_set(
        "logging.level",
        Some(toml::Value::String("DEBUG".into())),
    ));
    assert!(bus.flush(LONG));
    assert!(
        bus.flush(LONG),
        "the local notifications it caused are dispatched too"
    );
    let events: Vec<_> = rx.try_iter().collect();
    assert_eq!(
        events,
        [("config:logging.level".to_owned(), true, "DEBUG".to_owned())]
    );
    assert_eq!(config.get::<String>("logging.level").unwrap(), "DEBUG");

    // A remote unset lets the file show through again.
    bus.deliver(remote_set("logging.level", None));
    assert!(bus.flush(LONG) && bus.flush(LONG));
    assert_eq!(config.get::<String>("logging.level").unwrap(), "INFO");

    // A malformed payload is ignored, logged.
    bus.deliver(Event::from_remote(SET_EVENT, vec![0xff, 0x00]));
    assert!(bus.flush(LONG));
    assert_eq!(config.get::<String>("logging.level").unwrap(), "INFO");
}

/// Two processes setting one path at once: the later stamp wins in both,
/// whatever order the sets arrive in.
#[test]
fn concurrent_sets_converge_on_the_later_stamp() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(&bus, &write(dir.path(), ""));
    config.set("race.v", "mine").unwrap(); // clock 1 here
    // An older set from elsewhere loses...
    bus.deliver(remote_set_at(
        "race.v",
        Some(toml::Value::String("older".into())),
        1,
    ));
    assert!(bus.flush(LONG));
    assert_eq!(config.get::<String>("race.v").unwrap(), "mine");
    // ...a newer one wins, and the next local set is newer still.
    let future = now_ns() + 60_000_000_000;
    bus.deliver(remote_set_at(
        "race.v",
        Some(toml::Value::String("newer".into())),
        future,
    ));
    assert!(bus.flush(LONG));
    assert_eq!(config.get::<String>("race.v").unwrap(), "newer");
    let sets = bus.wait_for(SET_EVENT).unwrap();
    config.set("race.v", "latest").unwrap();
    let set = sets
        .wait(LONG)
        .unwrap()
        .payload::<ConfigSet>()
        .unwrap()
        .into_owned();
    assert!(set.clock > future, "{set:?}");
}

#[test]
fn secret_looking_values_are_redacted_in_change_logs() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(&EventBus::new(), &write(dir.path(), ""));
    config.set("db.password", "hunter2-in-the-log").unwrap();
    config.set("redaction_test.api_key", "sk-live-123").unwrap();
    config.set("redaction_test.visible", "plain-value").unwrap();
    let lines = logs.lines_with("config changed");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("db.password") && l.contains("<redacted>")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("hunter2") && !l.contains("sk-live")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("plain-value")), "{lines:?}");
}

/// Runs in a child process with the environment set; the parent test below
/// starts it. Does nothing when run directly.
#[test]
fn child_env_precedence() {
    let Ok(path) = std::env::var("SERVE_COMMON_TEST_CHILD_CONFIG") else {
        return;
    };
    let config = Config::builder()
        .path(&path)
        .env_prefix("SCTEST")
        .default_value("only.default", "d")
        .default_value("layer.a", "default")
        .default_value("layer.b", "default")
        .default_value("layer.c", "default")
        .no_events()
        .build()
        .unwrap();
    config.set("layer.c", "runtime").unwrap();
    // A bad value from the environment names its variable.
    let wrong = config
        .get::<u32>("notes.max_notes")
        .unwrap_err()
        .to_string();
    assert!(
        wrong.contains("environment variable SCTEST__NOTES__MAX_NOTES"),
        "{wrong}"
    );
    let wrong = config.section::<Notes>("notes").unwrap_err().to_string();
    assert!(
        wrong.contains("environment variable SCTEST__NOTES__MAX_NOTES"),
        "{wrong}"
    );
    assert_eq!(config.get::<String>("only.default").unwrap(), "d");
    assert_eq!(config.get::<String>("layer.a").unwrap(), "file");
    assert_eq!(config.get::<String>("layer.b").unwrap(), "env");
    assert_eq!(config.get::<String>("layer.c").unwrap(), "runtime");
    assert_eq!(
        config.get::<u16>("server.port").unwrap(),
        8080,
        "env values read as TOML"
    );
    assert_eq!(config.get::<String>("logging.level").unwrap(), "debug");
    // The env layer is read again on reload; a file edit keeps the order
    // (`layer.c` is not edited, so its runtime value stays).
    std::fs::write(
        &path,
        "[layer]\na = \"file2\"\nb = \"file2\"\nc = \"file\"\n",
    )
    .unwrap();
    config.reload().unwrap();
    assert_eq!(config.get::<String>("layer.a").unwrap(), "file2");
    assert_eq!(config.get::<String>("layer.b").unwrap(), "env");
    assert_eq!(config.get::<String>("layer.c").unwrap(), "runtime");
    println!("child-env-precedence-ok");
}

#[test]
fn env_overrides_the_file_and_defaults_but_not_runtime_sets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[layer]\na = \"file\"\nb = \"file\"\nc = \"file\"\n",
    );
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_env_precedence",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SERVE_COMMON_TEST_CHILD_CONFIG", &path)
        .env("SCTEST__LAYER__B", "env")
        .env("SCTEST__LAYER__C", "env")
        .env("SCTEST__SERVER__PORT", "8080")
        .env("SCTEST__LOGGING__LEVEL", "debug")
        .env("SCTEST__NOTES__MAX_NOTES", "lots")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("child-env-precedence-ok"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A late process gets a table set and a newer set beneath it in either
/// order: the newer one stays.
#[test]
fn nested_sets_applied_out_of_order_converge() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(&bus, &write(dir.path(), ""));
    let table: toml::Value = toml::from_str::<toml::Table>("b = 1\nc = 1\n")
        .unwrap()
        .into();
    let (older, newer) = (now_ns(), now_ns() + 1_000);
    bus.deliver(remote_set_at("a.b", Some(toml::Value::Integer(6)), newer));
    bus.deliver(remote_set_at("a", Some(table), older));
    assert!(bus.flush(LONG));
    assert_eq!(
        config.get::<i64>("a.b").unwrap(),
        6,
        "the newer set beneath stays"
    );
    assert_eq!(config.get::<i64>("a.c").unwrap(), 1);
    // An older set beneath a newer table set is ignored.
    bus.deliver(remote_set_at(
        "a.c",
        Some(toml::Value::Integer(9)),
        older - 1,
    ));
    assert!(bus.flush(LONG));
    assert_eq!(config.get::<i64>("a.c").unwrap(), 1);
    // A newer set beneath what is a scalar here wins too (elsewhere a set
    // made it a table): the stamps decide, whatever arrived first.
    config.set("s", 5).unwrap();
    bus.deliver(remote_set("s.t", Some(toml::Value::Integer(1))));
    assert!(bus.flush(LONG));
    assert_eq!(config.get::<i64>("s.t").unwrap(), 1);
    // A clock far ahead is refused: it would freeze the path everywhere.
    bus.deliver(remote_set_at(
        "a.b",
        Some(toml::Value::Integer(0)),
        u64::MAX,
    ));
    assert!(bus.flush(LONG));
    assert_eq!(config.get::<i64>("a.b").unwrap(), 6);
    config.set("a.b", 8).unwrap();
}

#[derive(Debug, Deserialize)]
struct Notes {
    max_notes: u32,
    #[serde(default)]
    title: String,
}

#[test]
fn a_typed_section_refuses_an_edit_or_a_set_that_breaks_it() {
    let logs = logs();
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[notes]\nmax_notes = 3\ntitle = \"t\"\n");
    let config = config_on(&bus, &path);
    let notes = config
        .section_with::<Notes, _>("notes", |n: &Notes| {
            if n.max_notes > 1000 {
                Err(format!("at most 1000 notes, not {}", n.max_notes))
            } else {
                Ok(())
            }
        })
        .unwrap();
    assert_eq!(notes.read().max_notes, 3);

    // Valid TOML, wrong type: refused as a whole, like a syntax error.
    let failed = bus
        .wait_for(serve_common::config::RELOAD_FAILED_EVENT)
        .unwrap();
    std::fs::write(&path, "[notes]\nmax_notes = \"lots\"\ntitle = \"new\"\n").unwrap();
    let error = config.reload().unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ConfigError::Invalid { .. }), "{text}");
    assert!(
        text.contains("`notes.max_notes`") && text.contains("config.toml:2"),
        "names the key and its source, to the line: {text}"
    );
    failed.wait(LONG).unwrap();
    assert_eq!(
        config.get::<String>("notes.title").unwrap(),
        "t",
        "nothing of the edit"
    );
    assert_eq!(notes.read().max_notes, 3);
    assert!(
        !logs.lines_with("`notes.max_notes`").is_empty(),
        "one ERROR line"
    );

    // A runtime set that breaks it is an error to its caller; one that
    // the validation refuses too.
    let error = config.set("notes.max_notes", -1).unwrap_err();
    assert!(error.to_string().contains("set at run time"), "{error}");
    let error = config.set("notes.max_notes", 5000).unwrap_err();
    assert!(error.to_string().contains("at most 1000 notes"), "{error}");
    assert_eq!(config.get::<u32>("notes.max_notes").unwrap(), 3);

    // A good edit applies, and the handle follows it.
    std::fs::write(&path, "[notes]\nmax_notes = 7\n").unwrap();
    config.reload().unwrap();
    assert_eq!(notes.read().max_notes, 7);
    assert_eq!(notes.get().title, "");
    // Registering a section the config does not satisfy is an error.
    #[derive(Debug, Deserialize)]
    struct Strict {
        #[allow(dead_code)]
        required: bool,
    }
    let error = config.section::<Strict>("strict").unwrap_err().to_string();
    assert!(
        error.contains("`strict`") && error.contains("missing"),
        "{error}"
    );
}

#[test]
fn a_deleted_file_is_reported_and_the_old_config_kept() {
    let bus = EventBus::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "kept = 1\n");
    let config = watched_config_on(&bus, &path);
    let failed = bus
        .wait_for(serve_common::config::RELOAD_FAILED_EVENT)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let failure = failed.wait(LONG).unwrap();
    let failure = failure
        .payload::<serve_common::config::ReloadFailure>()
        .unwrap();
    assert!(failure.error.contains("config.toml"), "{}", failure.error);
    assert_eq!(config.get::<i64>("kept").unwrap(), 1);
    // It comes back: read again.
    let back = bus.wait_for("config:kept").unwrap();
    replace(&path, "kept = 2\n");
    back.wait(LONG).unwrap();
    assert_eq!(config.get::<i64>("kept").unwrap(), 2);
}

#[test]
fn a_bad_value_names_its_file_and_line_or_the_runtime_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[a]\nx = 1\n\n[notes]\n# the limit\nmax_notes = \"lots\"\n\n[other]\ncount.n = \"three\"\n",
    );
    let config = config_on(&EventBus::new(), &path);
    let file_line = format!("{}:6", path.display());
    let wrong = config.get::<u32>("notes.max_notes").unwrap_err();
    assert!(matches!(wrong, ConfigError::Type { .. }), "{wrong}");
    assert!(wrong.to_string().contains(&file_line), "{wrong}");
    let wrong = config.section::<Notes>("notes").unwrap_err().to_string();
    assert!(wrong.contains(&file_line), "{wrong}");
    // A dotted key: the line of its last part.
    let wrong = config.get::<u32>("other.count.n").unwrap_err().to_string();
    assert!(wrong.contains(&format!("{}:9", path.display())), "{wrong}");

    config.set("runtime.n", "three").unwrap();
    let wrong = config.get::<u32>("runtime.n").unwrap_err().to_string();
    assert!(wrong.contains("(from a value set at run time)"), "{wrong}");

    // After an edit, the line in the new text.
    std::fs::write(&path, "[notes]\nmax_notes = \"many\"\n").unwrap();
    config.reload().unwrap();
    let wrong = config
        .get::<u32>("notes.max_notes")
        .unwrap_err()
        .to_string();
    assert!(wrong.contains(&format!("{}:2", path.display())), "{wrong}");
}

#[test]
fn unknown_keys_of_serve_commons_sections_are_warned_about_with_the_closest_key() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[server]\nworker = 2\nzzqqxxyy = 1\n[server.cors]\nallowed_origins = [\"https://a.example\"]\n[logging]\nlevl = \"DEBUG\"\n[events.nats]\nurll = \"nats://x\"\n[app]\nworker = 1\n",
    );
    let config = config_on(&EventBus::new(), &path);
    serve_common::default::actix::ServerSettings::register(&config).unwrap();
    serve_common::default::logging::LoggingSettings::register(&config).unwrap();
    serve_common::event::EventsSettings::register(&config).unwrap();
    let file = path.display().to_string();
    for (key, line, near) in [
        ("server.worker", 2, "did you mean `server.workers`?"),
        ("server.zzqqxxyy", 3, "serve-common does not read it"),
        ("logging.levl", 7, "did you mean `logging.level`?"),
        ("events.nats.urll", 9, "did you mean `events.nats.url`?"),
    ] {
        let expected = format!("unknown config key `{key}` (from {file}:{line}), ignored: {near}");
        let found = logs.lines_with(&expected);
        assert_eq!(found.len(), 1, "{expected:?} once: {found:?}");
        assert!(found[0].contains("WARN"), "{found:?}");
    }
    // The application's own sections are its business.
    assert!(logs.lines_with("`app.worker`").is_empty());

    // A reload warns about a new unknown key, not again about the old ones.
    std::fs::write(
        &path,
        "[server]\nworker = 2\n[events.ipc]\nbufer_events = 10\n",
    )
    .unwrap();
    config.reload().unwrap();
    let expected = format!(
        "unknown config key `events.ipc.bufer_events` (from {file}:4), ignored: did you mean `events.ipc.buffer_events`?"
    );
    assert_eq!(logs.lines_with(&expected).len(), 1, "{expected}");
    assert_eq!(
        logs.lines_with("unknown config key `server.worker`").len(),
        1,
        "warned once while it stays"
    );
}
