//! Worker processes, the gunicorn way: the supervisor binds once, workers
//! inherit the socket (the systemd `LISTEN_FDS` convention, read with the
//! `listenfd` crate) and serve it.

use std::ffi::OsString;
use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Settings;

/// Set in a worker's environment: its index.
pub(crate) const WORKER_ENV: &str = "SERVE_COMMON_WORKER";
/// Set in a worker's environment: the supervisor's pid.
const SUPERVISOR_ENV: &str = "SERVE_COMMON_SUPERVISOR";

/// Set in a worker's environment: the supervisor's runtime config sets.
const SETS_ENV: &str = "SERVE_COMMON_CONFIG_SETS";

/// A worker that dies sooner than this after its start is restarted only
/// after this long, so a worker that cannot start does not spin.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// SIGTERM and SIGINT, caught from creation on (so create it before
/// saying the service is up).
pub(super) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(super) fn new() -> io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves with the name of the next SIGTERM or SIGINT.
    pub(super) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// In a worker: the listening socket the supervisor handed down.
/// Elsewhere: `None`.
pub(super) fn inherited_listener() -> io::Result<Option<TcpListener>> {
    if std::env::var_os(WORKER_ENV).is_none() {
        return Ok(None);
    }
    // Die with the supervisor, even if it is killed with SIGKILL; if it is
    // gone already, do not start.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)?;
    let supervisor = std::env::var(SUPERVISOR_ENV)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok());
    if supervisor.is_some_and(|pid| nix::unistd::getppid().as_raw() != pid) {
        return Err(io::Error::other(
            "the supervisor exited before this worker started",
        ));
    }
    // Runtime sets made before this worker started (a level POST, say).
    if let Ok(sets) = std::env::var(SETS_ENV) {
        match crate::config::config().import_sets(&sets) {
            Ok(count) => tracing::debug!("applied {count} runtime config sets from the supervisor"),
            Err(error) => {
                tracing::warn!(%error, "cannot apply the supervisor's runtime config sets")
            }
        }
    }
    let listener = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)?
        .ok_or_else(|| {
            io::Error::other("a worker process was started without a listening socket")
        })?;
    Ok(Some(listener))
}

/// What the supervisor knows of one worker.
struct Worker {
    pid: Option<u32>,
    started: Instant,
    restart_at: Option<Instant>,
}

struct Exit {
    index: usize,
    pid: u32,
    status: io::Result<ExitStatus>,
}

struct Spawner {
    exe: PathBuf,
    args: Vec<OsString>,
    fd: i32,
    exits: mpsc::UnboundedSender<Exit>,
}

impl Spawner {
    /// Starts worker `index`. Runs on the thread that called `serve` (the
    /// main thread under `#[serve_common::main]`), which lives as long as
    /// the supervisor: a worker's parent-death signal follows that thread.
    fn spawn(&self, index: usize) -> io::Result<u32> {
        let mut child = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .env(WORKER_ENV, index.to_string())
            .env(SUPERVISOR_ENV, std::process::id().to_string())
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDS_FIRST_FD", self.fd.to_string())
            .env_remove("LISTEN_PID")
            .env(SETS_ENV, crate::config::config().export_sets())
            .spawn()?;
        let pid = child.id().unwrap_or_default();
        let exits = self.exits.clone();
        actix_web::rt::spawn(async move {
            let status = child.wait().await;
            let _ = exits.send(Exit { index, pid, status });
        });
        Ok(pid)
    }
}

fn signal_workers(workers: &[Worker], signal: Signal) {
    for pid in workers.iter().filter_map(|w| w.pid) {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// Supervises `settings.processes` workers serving `listener` until
/// SIGTERM or SIGINT, then stops them and waits for them.
pub(super) async fn supervise(listener: TcpListener, settings: &Settings) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};

    // The workers inherit the socket: clear close-on-exec on it.
    fcntl(&listener, FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
    let address = listener.local_addr()?;
    let (exits, mut exited) = mpsc::unbounded_channel();
    let spawner = Spawner {
        exe: std::env::current_exe()?,
        args: std::env::args_os().skip(1).collect(),
        fd: listener.as_raw_fd(),
        exits,
    };
    let mut stop = StopSignals::new()?;

    let mut workers = Vec::with_capacity(settings.processes);
    for index in 0..settings.processes {
        match spawner.spawn(index) {
            Ok(pid) => workers.push(Worker {
                pid: Some(pid),
                started: Instant::now(),
                restart_at: None,
            }),
            Err(error) => {
                signal_workers(&workers, Signal::SIGKILL);
                return Err(io::Error::new(
                    error.kind(),
                    format!("cannot start a worker process: {error}"),
                ));
            }
        }
    }
    let pids: Vec<u32> = workers.iter().filter_map(|w| w.pid).collect();
    tracing::info!(
        "listening on http://{address} with {} worker processes {pids:?} (supervisor pid {})",
        settings.processes,
        std::process::id()
    );

    let received = loop {
        let next_restart = workers.iter().filter_map(|w| w.restart_at).min();
        tokio::select! {
            received = stop.recv() => break received,
            Some(exit) = exited.recv() => {
                let worker = &mut workers[exit.index];
                worker.pid = None;
                match &exit.status {
                    Ok(status) => tracing::warn!("worker {} (pid {}) exited ({status}); starting another", exit.index, exit.pid),
                    Err(error) => tracing::warn!("worker {} (pid {}) lost ({error}); starting another", exit.index, exit.pid),
                }
                let soon = worker.started.elapsed() < RESTART_BACKOFF;
                worker.restart_at = Some(if soon { Instant::now() + RESTART_BACKOFF } else { Instant::now() });
            }
            () = sleep_until(next_restart) => {
                let now = Instant::now();
                for (index, worker) in workers.iter_mut().enumerate() {
                    if worker.restart_at.is_some_and(|at| at <= now) {
                        worker.started = now;
                        match spawner.spawn(index) {
                            Ok(pid) => {
                                tracing::info!("worker {index} started (pid {pid})");
                                worker.pid = Some(pid);
                                worker.restart_at = None;
                            }
                            Err(error) => {
                                tracing::error!("cannot start worker {index}: {error}; retrying");
                                worker.restart_at = Some(now + RESTART_BACKOFF);
                            }
                        }
                    }
                }
            }
        }
    };

    // Stop: workers got SIGINT from the terminal too, perhaps; SIGTERM
    // asks each for a graceful stop either way.
    tracing::info!("{received} received: stopping the worker processes");
    drop(listener);
    signal_workers(&workers, Signal::SIGTERM);
    let deadline = Instant::now() + settings.shutdown_timeout + Duration::from_secs(5);
    while workers.iter().any(|w| w.pid.is_some()) {
        tokio::select! {
            Some(exit) = exited.recv() => {
                workers[exit.index].pid = None;
                if let Ok(status) = exit.status {
                    use std::os::unix::process::ExitStatusExt;
                    // Killed by our own SIGTERM before it could install its
                    // handler (it had just started): not worth a warning.
                    if !status.success() && status.signal() != Some(libc_sigterm()) {
                        tracing::warn!("worker {} (pid {}) stopped with {status}", exit.index, exit.pid);
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::error!("worker processes still running after the shutdown timeout: killing them");
                signal_workers(&workers, Signal::SIGKILL);
                break;
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

fn libc_sigterm() -> i32 {
    Signal::SIGTERM as i32
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
