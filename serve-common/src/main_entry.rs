//! What `#[serve_common::main]` runs around the user's `async fn main`.

use std::future::Future;
use std::path::PathBuf;

use crate::config::{self, Config};
use crate::default::logging;
use crate::{event, ipc};

/// The options of `#[serve_common::main(...)]`.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct MainOptions {
    /// `config = "path"`: the config file when `SERVE_COMMON_CONFIG` is not
    /// set (default: `config.toml`).
    pub config: Option<&'static str>,
    /// `ipc = false` turns IPC off.
    pub ipc: bool,
    /// `logging = false` leaves logging to the application.
    pub logging: bool,
    /// The application crate's `CARGO_PKG_NAME`.
    pub package: &'static str,
    /// The application crate's `CARGO_PKG_VERSION`.
    pub version: &'static str,
}

fn fail(what: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("error: {what}: {error}");
    logging::flush();
    std::process::exit(1)
}

/// Flushes the log files however the body ends, a panic included.
struct FlushOnDrop;

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        logging::flush();
    }
}

/// Starts the NATS link if the config asks for one; whether it did.
fn link_nats() -> bool {
    let config = config::config();
    #[cfg(feature = "nats")]
    {
        match event::nats::NatsOptions::from_config(config) {
            Ok(None) => false,
            Ok(Some(options)) => match event::enable_nats(options) {
                Ok(_link) => {
                    #[cfg(feature = "actix")]
                    crate::default::management::add_health_check_with_details(
                        "nats",
                        || event::nats::link().map_or(Ok(()), |link| link.health()),
                        || {
                            event::nats::link()
                                .map(|link| link.health_details())
                                .unwrap_or_default()
                        },
                    );
                    true
                }
                Err(error) => fail("cannot carry events over NATS", error),
            },
            Err(error) => fail("bad [events.nats] config", error),
        }
    }
    #[cfg(not(feature = "nats"))]
    {
        if config.contains("events.nats.url") {
            tracing::warn!(
                "events.nats.url is set, but serve-common was built without its `nats` feature: events go over IPC"
            );
        }
        false
    }
}

/// The config as the macro reads it: `SERVE_COMMON_CONFIG`, when set,
/// points elsewhere than the macro's default.
fn config_builder(options: &MainOptions) -> config::ConfigBuilder {
    let mut builder = Config::builder();
    if let (Some(path), None) = (options.config, std::env::var_os(config::CONFIG_PATH_ENV)) {
        builder = builder.path(PathBuf::from(path));
    }
    builder
}

/// The outputs of the `[logging]` section: standard error, a file.
fn install_logging(config: &Config) -> Result<(), logging::LoggingError> {
    let mut outputs = logging::builder();
    if config.get_or("logging.stderr", true) {
        outputs = outputs.stderr();
    }
    if let Some(file) = config.get_opt::<String>("logging.file").ok().flatten() {
        let mut output = logging::FileOutput::new(file);
        output.max_bytes = config.get_or("logging.max_bytes", output.max_bytes);
        output.keep = config.get_or("logging.keep", output.keep);
        output.json = config.get_or("logging.json", output.json);
        outputs = outputs.file_output(output);
    }
    outputs.install().map(drop)
}

pub(crate) fn register_sections(config: &Config) -> Result<(), config::ConfigError> {
    logging::LoggingSettings::guard_global()?;
    let events = event::EventsSettings::register(config)?;
    #[cfg(feature = "tokio")]
    {
        events.get().apply_async_limits(event::bus());
        // Edits apply too.
        let section = events.clone();
        let _ = event::bus()
            .on("config:events.*")
            .label("serve-common async handler limits")
            .call(move |_: &event::Event| section.get().apply_async_limits(event::bus()));
    }
    #[cfg(not(feature = "tokio"))]
    drop(events);
    #[cfg(feature = "metrics")]
    std::mem::forget(crate::metrics::MetricsSettings::register(config)?);
    #[cfg(feature = "otel")]
    std::mem::forget(crate::telemetry::TelemetrySettings::register(config)?);
    #[cfg(feature = "actix")]
    crate::default::actix::ServerSettings::register(config)?;
    // The global config's (`config` is it): the service's rules follow it.
    #[cfg(feature = "actix")]
    crate::default::management::ManagementSettings::live()?;
    Ok(())
}

/// Start-up, the body on the actix runtime, then shut-down; see the
/// `main` macro's docs.
#[doc(hidden)]
pub fn run<F, Fut, R>(options: MainOptions, body: F) -> R
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    // What is logged before the config says where logs go waits for the
    // outputs.
    if options.logging {
        let _ = logging::capture_start_up();
    }
    // Started as the IPC server: log like the service's other processes
    // (the configured outputs and format), then serve, never return.
    if ipc::server_requested() && options.logging {
        let builder = config_builder(&options)
            .watch(false)
            .follow_remote_sets(false);
        // Without a usable config, standard error (which also replays
        // and ends the start-up capture).
        let installed = config::init(builder)
            .map_err(drop)
            .and_then(|config| install_logging(config).map_err(drop));
        if installed.is_err() {
            let _ = logging::builder().stderr().install();
        }
    }
    ipc::run_server_if_requested();
    // Started as a worker process: take the socket while single-threaded.
    #[cfg(feature = "actix")]
    crate::default::actix::adopt_inherited_socket();
    // Still single-threaded: export the address of the IPC server this
    // process will start, for its children, before any thread may read
    // the environment.
    let starts_ipc_server = options.ipc && ipc::prepare();

    crate::identity::set_application(options.package, options.version);

    if let Err(error) = config::init(config_builder(&options).watch(true)) {
        fail("cannot load the config", error);
    }
    // serve-common's own sections, typed: a wrong value is refused now and
    // on every reload, instead of being stored and then ignored.
    if let Err(error) = register_sections(config::config()) {
        fail("bad config", error);
    }
    if options.logging {
        if let Err(error) = install_logging(config::config()) {
            fail("cannot set up logging", error);
        }
    }
    let _flush = FlushOnDrop;
    #[cfg(feature = "otel")]
    if let Err(error) = crate::telemetry::install() {
        fail("bad [telemetry] config", error);
    }
    let _ = event::initialize();
    // A supervisor of worker processes runs no application handler.
    #[cfg(feature = "actix")]
    if crate::default::actix::will_supervise() {
        event::bus().become_supervisor();
    }
    // Events cross processes over NATS when `events.nats.url` is set (every
    // process connects itself), else over IPC: one link, never both.
    let over_nats = link_nats();
    if options.ipc {
        if let Err(error) = ipc::setup(None) {
            fail("cannot set up IPC", error);
        }
        if !over_nats {
            let link_options = event::IpcOptions::from_config(config::config())
                .unwrap_or_else(|error| fail("bad [events.ipc] config", error));
            if let Err(error) = event::enable_ipc_with(link_options) {
                fail("cannot carry events over IPC", error);
            }
            #[cfg(feature = "actix")]
            crate::default::management::add_health_check("ipc", || {
                event::ipc_link().map_or(Ok(()), |link| link.health())
            });
        }
    }
    // The recorder, before the body records anything; and the answers to
    // other processes' scrapes.
    #[cfg(feature = "metrics")]
    crate::metrics::install();
    if over_nats || options.ipc {
        // Runtime sets made before this process joined (a level POST, say).
        config::config().request_sync();
    }

    // Torn down when the body returns, and when it panics (on the way
    // out, while unwinding): the links flush what they hold, the IPC
    // server stops, rather than the kernel killing it with this process.
    let teardown = Teardown { starts_ipc_server };
    #[cfg(feature = "actix")]
    let result = actix_web::rt::System::new().block_on(body());
    #[cfg(not(feature = "actix"))]
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("cannot start the runtime", e))
        .block_on(body());
    drop(teardown);
    result
}

/// What `run` undoes after the body, returning or panicking.
struct Teardown {
    starts_ipc_server: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the main body panicked: closing the event links and stopping the IPC server"
            );
        }
        #[cfg(feature = "otel")]
        crate::telemetry::shutdown();
        #[cfg(feature = "nats")]
        if let Some(link) = event::nats::link() {
            link.close();
        }
        if let Some(link) = event::ipc_link() {
            link.close();
        }
        if self.starts_ipc_server {
            if let Err(error) = ipc::shutdown() {
                tracing::warn!(%error, "IPC server did not shut down cleanly");
            }
        }
    }
}
