//! Worker processes, the gunicorn way: the supervisor binds once, workers
//! inherit the sockets (the systemd `LISTEN_FDS` convention, read with the
//! `listenfd` crate, `LISTEN_FDNAMES` naming them) and serve them.

use std::ffi::OsString;
use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitStatus;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Listeners, Settings};

/// Set in a worker's environment: its index.
const WORKER_ENV: &str = "SERVE_COMMON_WORKER";
/// Set in a worker's environment: the supervisor's pid.
const SUPERVISOR_ENV: &str = "SERVE_COMMON_SUPERVISOR";
/// Set in a worker's environment: the supervisor's runtime config sets.
const SETS_ENV: &str = "SERVE_COMMON_CONFIG_SETS";
/// The `LISTEN_FDS` convention's variables (listenfd reads and removes the
/// first two).
const LISTEN_ENV: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDS_FIRST_FD",
    "LISTEN_FDNAMES",
];
/// The `LISTEN_FDNAMES` name of the management listener (the public one is
/// `http`).
const MANAGEMENT_FD_NAME: &str = "management";

/// A worker that dies sooner than this after its start counts as a failed
/// start: restarts back off (1 s, 2 s, 4 s... up to 30 s), and after
/// [`MAX_FAILED_STARTS`] in a row the supervisor gives up.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_FAILED_STARTS: u32 = 5;

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

/// What stops a serving process: SIGTERM/SIGINT, or (a service started
/// by [`crate::testing`]) its handle.
pub(super) enum StopSource {
    Signals(StopSignals),
    /// A name per request to stop (a closed channel stops at once), and
    /// who to tell once the server runs.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Channel(
        mpsc::UnboundedReceiver<&'static str>,
        Option<tokio::sync::oneshot::Sender<()>>,
    ),
}

impl StopSource {
    /// Says the server runs, to whoever waits for it.
    pub(super) fn serving(&mut self) {
        if let Self::Channel(_, serving) = self {
            if let Some(serving) = serving.take() {
                let _ = serving.send(());
            }
        }
    }

    /// Resolves with the name of the next request to stop.
    pub(super) async fn recv(&mut self) -> &'static str {
        match self {
            Self::Signals(signals) => signals.recv().await,
            Self::Channel(channel, _) => channel.recv().await.unwrap_or("the test's drop"),
        }
    }
}

/// What a worker process was handed by its supervisor.
struct Inherited {
    listeners: Listeners,
    sets: Option<String>,
}

static INHERITED: Mutex<Option<io::Result<Inherited>>> = Mutex::new(None);
/// In a worker: its supervisor's pid.
static SUPERVISOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
/// Whether this process supervises workers.
static SUPERVISING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The group of processes this one belongs to (its supervisor's pid) and
/// whether it is the supervisor; `None` outside a service of worker
/// processes.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn process_group() -> Option<(u32, bool)> {
    if SUPERVISING.load(std::sync::atomic::Ordering::Acquire) {
        return Some((std::process::id(), true));
    }
    SUPERVISOR.get().map(|pid| (*pid, false))
}

/// In a worker process: takes the listening socket and the rest of the
/// supervisor's hand-over out of the environment, and clears it (so a
/// child of the worker is not mistaken for one). `#[serve_common::main]`
/// calls this first thing, while the process has a single thread;
/// [`serve`](super::serve) calls it too, for programs without the macro.
/// Elsewhere, does nothing.
pub(crate) fn adopt_inherited_socket() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    let adopted = adopt();
    for name in [WORKER_ENV, SUPERVISOR_ENV, SETS_ENV]
        .into_iter()
        .chain(LISTEN_ENV)
    {
        std::env::remove_var(name);
    }
    *INHERITED.lock() = Some(adopted);
}

fn adopt() -> io::Result<Inherited> {
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
    if let Some(pid) = supervisor.and_then(|pid| u32::try_from(pid).ok()) {
        let _ = SUPERVISOR.set(pid);
        crate::identity::set_role(crate::identity::Role::Worker);
    }
    let sets = std::env::var(SETS_ENV).ok();
    let names = std::env::var(LISTEN_ENV[3]).unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let public = fds.take_tcp_listener(0)?.ok_or_else(|| {
        io::Error::other("a worker process was started without a listening socket")
    })?;
    let management = if names.split(':').nth(1) == Some(MANAGEMENT_FD_NAME) {
        Some(fds.take_tcp_listener(1)?.ok_or_else(|| {
            io::Error::other("a worker process was started without its management socket")
        })?)
    } else {
        None
    };
    Ok(Inherited {
        listeners: Listeners { public, management },
        sets,
    })
}

/// Whether this process will supervise worker processes: config
/// `server.processes > 1`, and not a worker itself. For
/// `#[serve_common::main]`, which makes the global bus a supervisor's
/// before the body runs.
pub(crate) fn will_supervise() -> bool {
    adopt_inherited_socket();
    INHERITED.lock().is_none() && crate::config::config().get_or("server.processes", 1_usize) > 1
}

/// In a worker: the listening sockets the supervisor handed down (the
/// supervisor's runtime config sets applied). Elsewhere: `None`.
pub(super) fn inherited_listeners() -> io::Result<Option<Listeners>> {
    adopt_inherited_socket();
    let Some(inherited) = INHERITED.lock().take() else {
        return Ok(None);
    };
    let inherited = inherited?;
    if let Some(sets) = inherited.sets {
        match crate::config::config().import_sets(&sets) {
            Ok(count) => tracing::debug!("applied {count} runtime config sets from the supervisor"),
            Err(error) => {
                tracing::warn!(%error, "cannot apply the supervisor's runtime config sets")
            }
        }
    }
    Ok(Some(inherited.listeners))
}

/// Binds `address` (the first of its resolutions that works) with
/// `SO_REUSEADDR` and a listen backlog of `backlog`.
pub(super) fn bind(address: &str, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on");
    for resolved in address.to_socket_addrs()? {
        let attempt = (|| {
            let socket = Socket::new(Domain::for_address(resolved), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&resolved.into())?;
            socket.listen(backlog)?;
            Ok::<_, io::Error>(TcpListener::from(socket))
        })();
        match attempt {
            Ok(listener) => return Ok(listener),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// What the supervisor knows of one worker.
struct Worker {
    pid: Option<u32>,
    started: Instant,
    restart_at: Option<Instant>,
    failed_starts: u32,
}

struct Exit {
    index: usize,
    pid: u32,
    status: io::Result<ExitStatus>,
}

struct Spawner<'a> {
    /// The sockets handed down, at consecutive descriptors (public first).
    listeners: &'a [TcpListener],
    argv0: OsString,
    args: Vec<OsString>,
    exits: mpsc::UnboundedSender<Exit>,
}

impl Spawner<'_> {
    /// Starts worker `index`. Runs on the thread that called `serve` (the
    /// main thread under `#[serve_common::main]`), which lives as long as
    /// the supervisor: a worker's parent-death signal follows that thread.
    fn spawn(&self, index: usize) -> io::Result<u32> {
        use std::os::unix::process::CommandExt as _;
        // The sockets are inheritable only while the worker starts, so
        // other children of this process do not hold the ports.
        for listener in self.listeners {
            fcntl(listener, FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
        }
        let names = if self.listeners.len() > 1 {
            format!("http:{MANAGEMENT_FD_NAME}")
        } else {
            "http".to_owned()
        };
        // /proc/self/exe: still this program after a deploy replaced the file.
        let mut command = std::process::Command::new("/proc/self/exe");
        command
            .arg0(&self.argv0)
            .args(&self.args)
            .env(WORKER_ENV, index.to_string())
            .env(SUPERVISOR_ENV, std::process::id().to_string())
            .env(LISTEN_ENV[0], self.listeners.len().to_string())
            .env_remove(LISTEN_ENV[1])
            .env(LISTEN_ENV[2], self.listeners[0].as_raw_fd().to_string())
            .env(LISTEN_ENV[3], names)
            .env(SETS_ENV, crate::config::config().export_sets());
        let spawned = tokio::process::Command::from(command).spawn();
        let mut restored = Ok(());
        for listener in self.listeners {
            let again = fcntl(listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop);
            restored = restored.and(again);
        }
        let mut child = spawned?;
        restored.map_err(io::Error::from)?;
        let Some(pid) = child.id() else {
            return Err(io::Error::other("the worker exited at once"));
        };
        #[cfg(feature = "metrics")]
        crate::metrics::worker_started(pid);
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
            if pid > 0 {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }
}

/// The listeners at consecutive descriptors, as `LISTEN_FDS` hands them
/// down: duplicates of the originals (which are closed), taken at the
/// lowest free descriptors until a run of free ones is reached.
/// `try_clone` duplicates with `F_DUPFD_CLOEXEC`: no child started
/// meanwhile inherits one.
fn consecutive(listeners: Listeners) -> io::Result<Vec<TcpListener>> {
    let Some(management) = listeners.management else {
        return Ok(vec![listeners.public]);
    };
    let mut filling = Vec::new();
    loop {
        let public = listeners.public.try_clone()?;
        let second = management.try_clone()?;
        if second.as_raw_fd() == public.as_raw_fd() + 1 {
            return Ok(vec![public, second]);
        }
        // A descriptor in use sits between them: keep both open (filling
        // the gaps) and try above.
        filling.push(public);
        filling.push(second);
    }
}

/// Supervises `settings.processes` workers serving `listeners` until
/// SIGTERM or SIGINT, then stops them and waits for them. An error when a
/// worker cannot be kept running or the workers did not stop in time.
pub(super) async fn supervise(listeners: Listeners, settings: &Settings) -> io::Result<()> {
    let address = listeners.public.local_addr()?;
    let management = listeners.management_address()?;
    let listeners = consecutive(listeners)?;
    let (exits, mut exited) = mpsc::unbounded_channel();
    let mut args = std::env::args_os();
    let spawner = Spawner {
        listeners: &listeners,
        argv0: args.next().unwrap_or_else(|| "serve-common-worker".into()),
        args: args.collect(),
        exits,
    };
    let mut stop = StopSignals::new()?;
    SUPERVISING.store(true, std::sync::atomic::Ordering::Release);
    crate::identity::set_role(crate::identity::Role::Supervisor);

    let mut workers: Vec<Worker> = Vec::with_capacity(settings.processes);
    for index in 0..settings.processes {
        match spawner.spawn(index) {
            Ok(pid) => workers.push(Worker {
                pid: Some(pid),
                started: Instant::now(),
                restart_at: None,
                failed_starts: 0,
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
    if let Some(management) = management {
        tracing::info!("management endpoints on http://{management}, served by every worker");
    }

    let outcome: Result<&'static str, io::Error> = loop {
        let next_restart = workers.iter().filter_map(|w| w.restart_at).min();
        tokio::select! {
            received = stop.recv() => break Ok(received),
            Some(exit) = exited.recv() => {
                #[cfg(feature = "metrics")]
                crate::metrics::worker_exited(exit.pid);
                let worker = &mut workers[exit.index];
                worker.pid = None;
                let status = match &exit.status {
                    Ok(status) => status.to_string(),
                    Err(error) => error.to_string(),
                };
                if worker.started.elapsed() < QUICK_DEATH {
                    worker.failed_starts += 1;
                } else {
                    worker.failed_starts = 0;
                }
                if worker.failed_starts >= MAX_FAILED_STARTS {
                    break Err(io::Error::other(format!(
                        "worker {} exited right after starting {} times in a row (last: {status}); giving up",
                        exit.index, worker.failed_starts
                    )));
                }
                let delay = match worker.failed_starts {
                    0 => Duration::ZERO,
                    n => (QUICK_DEATH * 2u32.pow(n - 1)).min(MAX_BACKOFF),
                };
                tracing::warn!(
                    "worker {} (pid {}) exited ({status}); starting another{}",
                    exit.index,
                    exit.pid,
                    if delay.is_zero() { String::new() } else { format!(" in {delay:?}") }
                );
                worker.restart_at = Some(Instant::now() + delay);
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
                                worker.restart_at = Some(now + QUICK_DEATH);
                            }
                        }
                    }
                }
            }
        }
    };

    // Stop: SIGTERM asks each worker for a graceful stop (they may have
    // had the terminal's SIGINT too); a second signal here makes it
    // immediate; after the shutdown timeout, SIGKILL.
    match &outcome {
        Ok(received) => tracing::info!("{received} received: stopping the worker processes"),
        Err(error) => tracing::error!("{error}: stopping the worker processes"),
    }
    drop(spawner);
    drop(listeners);
    signal_workers(&workers, Signal::SIGTERM);
    let deadline =
        Instant::now() + settings.drain + settings.shutdown_timeout + Duration::from_secs(5);
    let mut killed = false;
    while workers.iter().any(|w| w.pid.is_some()) {
        tokio::select! {
            Some(exit) = exited.recv() => {
                workers[exit.index].pid = None;
                match exit.status {
                    Ok(status) => tracing::info!("worker {} (pid {}) stopped: {status}", exit.index, exit.pid),
                    Err(error) => tracing::warn!("worker {} (pid {}) lost: {error}", exit.index, exit.pid),
                }
            }
            received = stop.recv() => {
                tracing::warn!("{received} received again: stopping the workers at once");
                signal_workers(&workers, Signal::SIGTERM);
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::error!("worker processes still running after the shutdown timeout: killing them");
                signal_workers(&workers, Signal::SIGKILL);
                killed = true;
                break;
            }
        }
    }
    tracing::info!("stopped");
    outcome?;
    if killed {
        return Err(io::Error::other(
            "worker processes did not stop within the shutdown timeout and were killed",
        ));
    }
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
