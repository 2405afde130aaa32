//! The default logging setup: the real subscriber, a writer the test reads,
//! real files, level changes through the real config and its events.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serve_common::config::{self, Config};
use serve_common::default::logging::{self, FileOutput};
use serve_common::event;
use serve_common_tests::LogCapture;

const LONG: Duration = Duration::from_secs(10);

struct Setup {
    capture: LogCapture,
    config_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Tests change the one global level: one at a time.
fn setup() -> (MutexGuard<'static, ()>, &'static Setup) {
    static SERIAL: Mutex<()> = Mutex::new(());
    static SETUP: OnceLock<Setup> = OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let setup = SETUP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config_file = dir.path().join("config.toml");
        std::fs::write(&config_file, "[logging]\nlevel = \"INFO\"\n").unwrap();
        config::init(Config::builder().path(&config_file).no_env().watch(true)).unwrap();
        let capture = LogCapture::default();
        logging::add_output_writer(capture.make_writer(), false).unwrap();
        Setup {
            capture,
            config_file,
            _dir: dir,
        }
    });
    // Back to the file's level between tests.
    config::config().unset("logging.level").unwrap();
    config::config().unset("logging.targets").unwrap();
    settle();
    (guard, setup)
}

/// Lets every queued event (a config change, the level it carries) apply.
fn settle() {
    assert!(event::bus().flush(LONG));
    assert!(event::bus().flush(LONG));
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn the_line_format_is_the_originals() {
    let (_serial, setup) = setup();
    tracing::info!(user = "ann", "format check one");
    let line = setup.capture.lines_with("format check one").pop().unwrap();
    let pattern = regex::Regex::new(&format!(
        r#"^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}}\] \[INFO    \] \[{}\] format check one user="ann"$"#,
        std::process::id()
    ))
    .unwrap();
    assert!(pattern.is_match(&line), "{line}");
    tracing::warn!("format check two");
    let line = setup.capture.lines_with("format check two").pop().unwrap();
    assert!(line.contains("] [WARNING ] ["), "{line}");
    // The location appears at TRACE only.
    assert!(!line.contains("logging:"), "{line}");
}

#[test]
fn trace_lines_carry_the_location() {
    let (_serial, setup) = setup();
    config::config().set("logging.level", "trace").unwrap();
    settle();
    assert_eq!(logging::level(), "TRACE");
    let span = tracing::info_span!("work");
    let line_no = line!() + 1;
    span.in_scope(|| tracing::trace!("deep in work"));
    let line = setup.capture.lines_with("deep in work").pop().unwrap();
    assert!(
        line.contains(&format!(
            "] [TRACE   ] [{}] [logging:work:{line_no}] deep in work",
            std::process::id()
        )),
        "{line}"
    );
}

#[test]
fn the_level_follows_a_config_set_and_a_file_edit() {
    let (_serial, setup) = setup();
    tracing::debug!("hidden at info");
    config::config().set("logging.level", "debug").unwrap();
    settle();
    tracing::debug!("shown at debug");
    assert!(setup.capture.lines_with("hidden at info").is_empty());
    assert_eq!(setup.capture.lines_with("shown at debug").len(), 1);
    config::config().unset("logging.level").unwrap();
    settle();

    let changed = event::wait_for("config:logging.level").unwrap();
    replace(&setup.config_file, "[logging]\nlevel = \"ERROR\"\n");
    changed.wait(LONG).unwrap();
    settle();
    assert_eq!(logging::level(), "ERROR");
    tracing::warn!("hidden at error");
    assert!(setup.capture.lines_with("hidden at error").is_empty());
    let back = event::wait_for("config:logging.level").unwrap();
    replace(&setup.config_file, "[logging]\nlevel = \"INFO\"\n");
    back.wait(LONG).unwrap();
    settle();
    assert_eq!(logging::level(), "INFO");
}

#[test]
fn unknown_levels_are_refused_and_the_effective_level_stays() {
    let (_serial, setup) = setup();
    assert_eq!(logging::level(), "INFO");
    // The [logging] section is guarded: a value logging cannot use is an
    // error to whoever sets it, and nothing changes.
    let error = config::config().set("logging.level", "NOPE").unwrap_err();
    assert!(
        error.to_string().contains("unknown log level \"NOPE\""),
        "{error}"
    );
    settle();
    assert_eq!(logging::level(), "INFO");
    let error = config::config().set("logging.level", 5).unwrap_err();
    assert!(error.to_string().contains("`logging.level`"), "{error}");
    settle();
    assert_eq!(logging::level(), "INFO");
    let _ = &setup;
    let error = logging::set_level("loud").unwrap_err();
    assert!(error.to_string().contains("unknown log level"), "{error}");
    logging::set_level("warning").unwrap();
    settle();
    assert_eq!(logging::level(), "WARNING");
    assert_eq!(
        config::config().get::<String>("logging.level").unwrap(),
        "WARNING"
    );
}

#[test]
fn per_target_levels() {
    let (_serial, setup) = setup();
    logging::set_target_level("logging::quiet", "error").unwrap();
    logging::set_target_level("logging::chatty", "TRACE").unwrap();
    settle();
    assert_eq!(
        logging::targets().get("logging::quiet").map(String::as_str),
        Some("ERROR")
    );
    tracing::info!(target: "logging::quiet", "quiet info");
    tracing::error!(target: "logging::quiet", "quiet error");
    tracing::debug!(target: "logging::chatty", "chatty debug");
    tracing::debug!("default debug");
    assert!(setup.capture.lines_with("quiet info").is_empty());
    assert_eq!(setup.capture.lines_with("quiet error").len(), 1);
    assert_eq!(setup.capture.lines_with("chatty debug").len(), 1);
    assert!(setup.capture.lines_with("default debug").is_empty());
    assert!(logging::set_target_level("logging::x", "NOPE").is_err());
    // A target is a module path: no smuggled directives.
    let error = logging::set_target_level("debug,x", "warn").unwrap_err();
    assert!(error.to_string().contains("module path"), "{error}");
    assert!(
        config::config()
            .set("logging.targets", toml::toml! { "debug,y" = "warn" })
            .is_err()
    );
    settle();
    assert_eq!(logging::level(), "INFO");
    assert!(!logging::targets().contains_key("debug,y"));
}

#[test]
fn files_rotate_by_size_and_lose_no_line() {
    let (_serial, _) = setup();
    let dir = tempfile::tempdir().unwrap();
    let path = logging::add_file(FileOutput {
        dir: Some(dir.path().to_owned()),
        max_bytes: 20_000,
        keep: 1000,
        ..FileOutput::new("rotating.log")
    })
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..2500 {
                    tracing::info!(thread = t, i, "rotation line");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    logging::flush();
    let mut lines = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        files += 1;
        assert!(
            text.len() < 20_000 + 200,
            "{} is {} bytes",
            path.display(),
            text.len()
        );
        assert!(text.is_empty() || text.ends_with('\n'), "a line was split");
        lines += text.lines().filter(|l| l.contains("rotation line")).count();
    }
    assert_eq!(lines, 10_000, "lines lost or duplicated across rotation");
    assert!(files > 10, "rotated into {files} files");
}

struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        f.write_str("counted")
    }
}

#[serve_common::time_and_log("sync add {a} {b}")]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// No placeholder: logged as written (escapes undone), nothing formatted.
#[serve_common::time_and_log("braces {{kept}}", level = "info")]
fn plain_message() {}

#[serve_common::time_and_log("lazy {c}")]
fn lazy(c: &Counted) {
    let _ = c;
}

#[serve_common::time_and_log("async double {x:?}", level = "info")]
async fn double(x: u64) -> u64 {
    tokio::task::yield_now().await;
    2 * x
}

#[derive(Debug)]
struct Service;

impl Service {
    #[serve_common::time_and_log("method of {self:?} with {n}")]
    fn method(&self, n: u8) -> Result<u8, String> {
        if n == 0 {
            return Err("zero".into());
        }
        Ok(n)
    }
}

#[test]
fn time_and_log_on_sync_async_and_methods() {
    let (_serial, setup) = setup();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // DEBUG is off at INFO: the message is not even formatted.
    lazy(&Counted(count.clone()));
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(setup.capture.lines_with("lazy counted").is_empty());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(runtime.block_on(double(21)), 42);
    let line = setup.capture.lines_with("async double 21").pop().unwrap();
    assert!(
        regex::Regex::new(r"\[INFO    \] .* async double 21: \d+ ns$")
            .unwrap()
            .is_match(&line),
        "{line}"
    );

    config::config().set("logging.level", "DEBUG").unwrap();
    settle();
    lazy(&Counted(count.clone()));
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(add(2, 3), 5);
    assert_eq!(Service.method(0), Err("zero".into()));
    let debug_line = regex::Regex::new(r"\[DEBUG   \] .*: \d+ ns$").unwrap();
    for message in ["lazy counted", "sync add 2 3", "method of Service with 0"] {
        let line = setup.capture.lines_with(&format!("{message}: ")).pop();
        let line = line.unwrap_or_else(|| panic!("no line for {message}"));
        assert!(debug_line.is_match(&line), "{line}");
    }
    plain_message();
    assert_eq!(setup.capture.lines_with("braces {kept}: ").len(), 1);
    // The guard form.
    {
        let _timer = serve_common::log_util::time_and_log("guarded block");
    }
    assert_eq!(setup.capture.lines_with("guarded block: ").len(), 1);
}

#[test]
fn json_lines_are_an_option() {
    let (_serial, _) = setup();
    let json = LogCapture::default();
    logging::add_output_writer_json(json.make_writer()).unwrap();
    tracing::info!(user = "ann", "json check");
    let line = json.lines_with("json check").pop().unwrap();
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    for part in [
        r#""level":"INFO""#,
        r#""message":"json check""#,
        r#""user":"ann""#,
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
}

#[test]
fn the_builder_installs_outputs_in_one_go() {
    let (_serial, _) = setup();
    let dir = tempfile::tempdir().unwrap();
    let logs_dir = dir.path().join("nested/logs");
    let paths = logging::builder()
        .file_output(FileOutput {
            dir: Some(logs_dir.clone()),
            ..FileOutput::new("built.log")
        })
        .install()
        .unwrap();
    assert_eq!(paths, [logs_dir.join("built.log")]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&logs_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    tracing::info!("built and written");
    logging::flush();
    let text = std::fs::read_to_string(&paths[0]).unwrap();
    assert!(
        text.contains("] [INFO    ] [") && text.contains("built and written"),
        "{text}"
    );
}

#[derive(serve_common::Cached)]
struct Indexed {
    #[input]
    words: Vec<String>,
    cache: serve_common::cached::Cache<Self>,
}

#[serve_common::cached]
impl Indexed {
    /// Timed where it computes, not at every cache hit.
    #[cached]
    #[dependency(words)]
    #[compute(serve_common::time_and_log("index built", level = "info"))]
    fn longest(&self) -> usize {
        self.words.iter().map(String::len).max().unwrap_or(0)
    }

    /// Timed once per call (the attribute is not repeated on the body).
    #[setter(words)]
    #[serve_common::time_and_log("word added", level = "info")]
    fn add(&mut self, word: &str) {
        self.words.push(word.to_owned());
    }
}

#[test]
fn cached_properties_time_their_computation_and_setters_once() {
    let (_serial, setup) = setup();
    let mut index = Indexed {
        words: vec!["a".into()],
        cache: Default::default(),
    };
    for _ in 0..3 {
        assert_eq!(*index.longest(), 1);
    }
    assert_eq!(setup.capture.lines_with("index built: ").len(), 1);
    index.add("abc");
    assert_eq!(*index.longest(), 3);
    assert_eq!(setup.capture.lines_with("index built: ").len(), 2);
    assert_eq!(setup.capture.lines_with("word added: ").len(), 1);
}
