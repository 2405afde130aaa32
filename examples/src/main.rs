//! The example service: events and hot-reloaded config working for real.
//!
//! `cargo run -p example-service` runs it until Ctrl-C: it greets on every
//! tick; edit `examples/config.toml` (or the file named by
//! `SERVE_COMMON_CONFIG`) and watch the changes land. `-- --demo` copies
//! the config to a temporary directory, edits it itself, and exits.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serve_common::config::{self, CONFIG_PATH_ENV};
use serve_common::event;
use serve_common::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    count: u64,
}

#[derive(Debug, Deserialize)]
struct Greeting {
    message: String,
    name: String,
}

/// Every config change, from a file edit or a runtime `set`.
#[on_event("config:*")]
fn config_changed(event: &str, change: &ConfigChange) {
    tracing::info!(%event, source = ?change.source, "handler saw a config change");
}

/// Greets on every tick, with whatever the config says now.
#[on_event("app.tick", ack)]
fn greet(tick: &Tick) -> Result<(), config::ConfigError> {
    let greeting: Greeting = config().get("greeting")?;
    tracing::info!(
        tick = tick.count,
        "{}, {}!",
        greeting.message,
        greeting.name
    );
    Ok(())
}

fn config_path() -> PathBuf {
    std::env::var_os(CONFIG_PATH_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let demo = std::env::args().any(|a| a == "--demo");
    let mut path = config_path();
    let _scratch = if demo {
        let dir = std::env::temp_dir().join(format!("serve-common-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&path, dir.join("config.toml"))?;
        path = dir.join("config.toml");
        Some(Scratch(dir))
    } else {
        None
    };

    event::initialize();
    let config = config::init(Config::builder().path(&path).watch(true))?;
    tracing::info!(file = %path.display(), "example service started; edit the file to see it reload (Ctrl-C stops)");

    if demo {
        return run_demo(config, &path);
    }
    // A ticker whose interval follows the config: edit `app.tick_seconds`.
    for count in 1.. {
        event::notify("app.tick", Tick { count });
        let every: u64 = config.get_or("app.tick_seconds", 5).max(1);
        std::thread::sleep(Duration::from_secs(every));
    }
    Ok(())
}

/// Edits the file, sets a value at run time, and checks each step landed.
fn run_demo(config: &Config, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let timeout = Duration::from_secs(10);
    event::notify_and_wait("app.tick", Tick { count: 1 }, None, timeout)?;

    let reloaded = event::wait_for("config:greeting.name")?;
    let text =
        std::fs::read_to_string(path)?.replace("name = \"world\"", "name = \"reloaded world\"");
    std::fs::write(path, text)?;
    reloaded.wait(timeout)?;
    event::notify_and_wait("app.tick", Tick { count: 2 }, None, timeout)?;

    let set = event::wait_for("config:greeting.message")?;
    config.set("greeting.message", "bonjour")?;
    set.wait(timeout)?;
    event::notify_and_wait("app.tick", Tick { count: 3 }, None, timeout)?;

    let name: String = config.get("greeting.name")?;
    let message: String = config.get("greeting.message")?;
    if (name.as_str(), message.as_str()) != ("reloaded world", "bonjour") {
        return Err(format!("unexpected config after the demo: {message}, {name}").into());
    }
    tracing::info!("demo finished: a file edit and a runtime set both reached the handlers");
    Ok(())
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
