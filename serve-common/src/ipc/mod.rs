//! Message-based IPC over Unix sockets: the Python original's `ipc` module.
//!
//! A dedicated server process keeps groups of members; every message a
//! member sends reaches every *other* member of its group exactly once, in
//! the order it was sent.
//!
//! ```no_run
//! fn main() -> Result<(), serve_common::ipc::IpcError> {
//!     // First line: when this executable was started as the IPC server,
//!     // this runs the server and never returns.
//!     serve_common::ipc::run_server_if_requested();
//!
//!     let server_pid = serve_common::ipc::start()?; // children inherit SERVCOM_IPC_ADDR
//!     let group = serve_common::ipc::join_group::<String>("greetings")?;
//!     group.send(&"hello".to_owned())?;
//!     # let _ = server_pid;
//!     serve_common::ipc::shutdown()?;
//!     Ok(())
//! }
//! ```
//!
//! # How it starts
//!
//! [`start`] re-executes the current executable (or
//! [`ServerOptions::program`]) with the marker variable `SERVCOM_IPC_SERVER`
//! set. That executable must call [`run_server_if_requested`] before
//! anything else (the `#[serve_common::main]` macro does): it becomes the
//! server, binds an `AF_UNIX` `SOCK_SEQPACKET` socket in the abstract
//! namespace at the address the starting process chose, and prints it
//! (base64) on its standard output, which `start` checks. Child processes
//! find the server through `SERVCOM_IPC_ADDR` with [`setup`]. Call
//! [`prepare`] first thing in `main`, while the process has one thread: it
//! chooses the address and exports the variable before any thread may read
//! the environment (the main macro does). [`configure_command`] sets the
//! variable on a `Command` explicitly.
//!
//! The server ignores `SIGINT` (a `^C` reaches the whole process group; the
//! parent decides when the server stops, with [`shutdown`]) and dies with
//! its parent (`PR_SET_PDEATHSIG`; `start` forks it from a thread that lives
//! as long as the process). Only processes of the server's uid may connect
//! (`SO_PEERCRED`, checked on accept, before the connection costs a
//! thread); others are refused with a log line.
//!
//! # Faults
//!
//! - **The server dies.** The process that started it reaps it (no
//!   zombie) and starts another on the same address, logged at WARN: at
//!   once, or after a jittered back-off when the last one died within a
//!   second of starting. Members see their connection close; the event
//!   bus's link reconnects and rejoins by itself (see
//!   [`event`](crate::event#across-processes-the-ipc-link)); a plain [`GroupSocket`] returns
//!   [`IpcError::Closed`] and its owner joins again. For
//!   [`ServerOptions::rejoin_window`] after a restart, the new server
//!   replays what it forwarded to members that rejoin late, so what the
//!   first member back sent reaches the others.
//! - **A member stops reading.** The fan-out never waits for it: each
//!   message goes straight to each member's socket without blocking, and
//!   what a socket refuses waits in that member's queue (in order; later
//!   messages follow through the queue until it drains). A member whose
//!   queue would grow past [`ServerOptions::queue_bytes`], or that reads
//!   nothing for [`ServerOptions::stall_timeout`], is cut off: that member
//!   only, logged at WARN with the number of messages discarded, which it
//!   learns when it rejoins. The others lose nothing and wait for nothing.
//! - **A member misbehaves.** The whole greeting has one deadline
//!   ([`ServerOptions::greeting_timeout`]), so a connection that trickles
//!   bytes holds nothing for long; buffers grow with the bytes that arrive,
//!   not with the lengths a peer announces; a malformed packet or frame is
//!   logged and dropped, by the server and by [`GroupSocket::recv`]; neither
//!   crashes. A join waits at most [`JOIN_TIMEOUT`] for the server's welcome.
//! - **Shutdown.** The server forwards what members sent before it, waits
//!   up to [`ServerOptions::drain_timeout`] for each member to read what is
//!   queued for it, then exits.
//!
//! # Guarantees and limits
//!
//! - Messages are CBOR (self-describing: `toml::Value` and other
//!   `deserialize_any` types round-trip), framed across packets, at most
//!   [`ServerOptions::max_message`] bytes (16 MiB by default); a larger send
//!   is an error for the sender. See [`frame`] for the wire format.
//! - Every member receives every other member's messages once, in the
//!   order each was sent, while it is connected. Messages written to a
//!   server that dies before forwarding them are lost (nothing
//!   acknowledges them), and so are messages sent while a member is away
//!   (beyond what a restarted server replays).
//! - Creating processes with `fork` and no `exec` after setup is not
//!   supported.

pub mod frame;
#[cfg(feature = "tokio")]
mod nonblocking;
mod server;
mod socket;

#[cfg(feature = "tokio")]
pub use self::nonblocking::AsyncGroupSocket;

use std::io::{self, BufRead};
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use base64::Engine as _;
use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use self::frame::Decoder;

/// The variable that carries the server's address (base64) to children.
pub const ADDR_ENV: &str = "SERVCOM_IPC_ADDR";
/// The variable that carries the maximum message size to children.
pub const MAX_MESSAGE_ENV: &str = "SERVCOM_IPC_MAX_MESSAGE";
/// The marker that makes [`run_server_if_requested`] run the server.
pub const SERVER_MARKER_ENV: &str = "SERVCOM_IPC_SERVER";
const PARENT_ENV: &str = "SERVCOM_IPC_PARENT";
const OPTIONS_ENV: &str = "SERVCOM_IPC_OPTIONS";
/// The address the server binds (base64), chosen by the process that
/// starts it, so a restarted server takes the same one.
const NAME_ENV: &str = "SERVCOM_IPC_NAME";
/// How many servers ran at this address before this one.
const GENERATION_ENV: &str = "SERVCOM_IPC_GENERATION";

/// How long [`join_group`] waits for the server's welcome.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A server that exits sooner than this after its start counts as a
/// failed start: restarts back off (see [`start_with`]).
const QUICK_DEATH: Duration = Duration::from_secs(1);

/// The default maximum message size: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;

/// The first message of every connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Greeting {
    Join {
        group: String,
        /// A member coming back after its connection broke: a restarted
        /// server replays to it what it forwarded since it started.
        #[serde(default)]
        rejoin: bool,
        /// Sends only: in a [queue group](QUEUE_GROUP_PREFIX), never the
        /// member a message is handed to.
        #[serde(default)]
        send_only: bool,
    },
    Shutdown,
}

/// Groups whose name starts so are queue groups: the server hands each
/// message to one member (round robin over those that did not join to
/// send only, the sender included), not to every other member.
/// (serve-common's own prefix: an application's group names do not start
/// so.)
pub(crate) const QUEUE_GROUP_PREFIX: &str = "serve-common.queue:";
pub(crate) use self::server::QUEUE_ACK;

/// The server's answer to a `Join`, sent once the member is in the group:
/// `join_group` returns only then, so the group includes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Welcome {
    pub(crate) member: u64,
    pub(crate) max_message: u64,
    /// The server's pid.
    #[serde(default)]
    pub(crate) server_pid: u32,
    /// When this server cut this process off from the group earlier: how
    /// many messages it discarded for it.
    #[serde(default)]
    pub(crate) missed: Option<u64>,
    /// Messages replayed after the welcome (a restarted server's first
    /// moments, to a member that rejoined late).
    #[serde(default)]
    pub(crate) replayed: u64,
}

/// How the server behaves; [`start_with`] passes it to the server process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerOptions {
    /// The largest message, in bytes (default 16 MiB).
    pub max_message: usize,
    /// Each member's outgoing queue, in bytes (default 64 MiB): what its
    /// socket could not take yet. A member whose queue would grow past it
    /// is cut off.
    pub queue_bytes: usize,
    /// How long a member with a non-empty queue may read nothing before it
    /// is cut off (default 10 s).
    pub stall_timeout: Duration,
    /// How long a new connection has to send its whole greeting (default 2 s).
    pub greeting_timeout: Duration,
    /// How long, after a restart, the server keeps what it forwards (at
    /// most half of `queue_bytes` per group) for members that rejoin late (default
    /// 2 s): what one member sent on rejoining reaches the ones that
    /// rejoin after it.
    #[serde(default = "default_rejoin_window")]
    pub rejoin_window: Duration,
    /// At [`shutdown`], how long the server waits for its members to read
    /// what is queued for them before it exits (default 2 s). A member
    /// that disconnects meanwhile loses what was queued for it.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Duration,
    /// The executable to run as the server (default: the current one).
    /// It must call [`run_server_if_requested`] first thing.
    #[serde(skip)]
    pub program: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_message: DEFAULT_MAX_MESSAGE,
            queue_bytes: 64 << 20,
            stall_timeout: Duration::from_secs(10),
            greeting_timeout: Duration::from_secs(2),
            rejoin_window: default_rejoin_window(),
            drain_timeout: default_drain_timeout(),
            program: None,
        }
    }
}

fn default_rejoin_window() -> Duration {
    Duration::from_secs(2)
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(2)
}

/// What can go wrong with IPC.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// No server: call [`start`] or [`setup`] first.
    #[error("IPC is not set up: call ipc::start() or ipc::setup() first")]
    NotSetUp,
    /// The server could not be started.
    #[error("cannot start the IPC server: {0}")]
    Spawn(String),
    /// An address that is not valid base64.
    #[error("invalid IPC address {address:?}: {message}")]
    BadAddress {
        /// The address given.
        address: String,
        /// Why.
        message: String,
    },
    /// A socket error.
    #[error("IPC socket error: {0}")]
    Io(#[from] io::Error),
    /// A message over the maximum size.
    #[error(transparent)]
    TooLarge(#[from] frame::TooLarge),
    /// A value that cannot be encoded.
    #[error("cannot encode an IPC message: {0}")]
    Encode(String),
    /// A message that cannot be decoded as the expected type.
    #[error("cannot decode an IPC message: {0}")]
    Decode(String),
    /// The server closed the connection (shut down, or disconnected this
    /// member for not reading).
    #[error("the IPC server closed the connection")]
    Closed,
    /// This event bus already carries its events over IPC.
    #[error("this event bus is already linked to IPC")]
    AlreadyEnabled,
    /// The server closed the connection instead of accepting the member
    /// (another user, or a malformed greeting); its log says why.
    #[error("the IPC server refused the connection (see its log)")]
    Refused,
    /// The server did not welcome the member in time (it is stuck, or the
    /// address is not an IPC server's).
    #[error("the IPC server did not answer within {0:?}")]
    Timeout(Duration),
}

/// What the process that started the server knows of it.
struct Keeper {
    /// The running server's pid (0 between a death and its restart).
    pid: std::sync::atomic::AtomicU32,
    /// Set once the keeper thread has reaped the last server and ended.
    ended: Mutex<bool>,
    ended_signal: parking_lot::Condvar,
    drain_timeout: Duration,
}

struct State {
    address: Vec<u8>,
    max_message: usize,
    /// Chosen by [`prepare`] for a server not started yet.
    reserved: bool,
    started: Option<Arc<Keeper>>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn encode_address(address: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(address)
}

fn decode_address(address: &str) -> Result<Vec<u8>, IpcError> {
    base64::engine::general_purpose::STANDARD
        .decode(address.trim())
        .map_err(|e| IpcError::BadAddress {
            address: address.to_owned(),
            message: e.to_string(),
        })
}

/// Whether this process was started to be the IPC server (see
/// [`run_server_if_requested`]).
pub(crate) fn server_requested() -> bool {
    std::env::var_os(SERVER_MARKER_ENV).as_deref() == Some("1".as_ref())
}

/// If this process was started as the IPC server, runs the server and
/// never returns; otherwise returns at once. Call it first thing in `main`
/// (the `#[serve_common::main]` macro does).
pub fn run_server_if_requested() {
    if !server_requested() {
        return;
    }
    use nix::sys::signal::Signal;
    // Die with the parent, and make sure it did not die already.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let parent: Option<i32> = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse().ok());
    if parent.is_some_and(|p| nix::unistd::getppid().as_raw() != p) {
        std::process::exit(0);
    }
    // ^C reaches the whole process group: the parent decides when we stop.
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::default());
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(false)
        .with_thread_names(true)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let options: ServerOptions = std::env::var(OPTIONS_ENV)
        .ok()
        .and_then(|o| serde_json_like::from_str(&o))
        .unwrap_or_default();
    let name = match std::env::var(NAME_ENV).ok().map(|n| decode_address(&n)) {
        Some(Ok(name)) => name,
        _ => new_address(),
    };
    let generation = std::env::var(GENERATION_ENV)
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    match socket::listen(&name) {
        Ok(listener) => server::serve_and_announce(listener, &name, options, generation),
        Err(error) => {
            tracing::error!(%error, address = %encode_address(&name), "IPC server cannot listen");
            std::process::exit(1);
        }
    }
}

/// A fresh abstract address for a server this process will start.
fn new_address() -> Vec<u8> {
    format!(
        "serve-common-ipc-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
    .into_bytes()
}

/// The options travel to the server in an environment variable, as TOML.
mod serde_json_like {
    use super::ServerOptions;

    pub(super) fn to_string(options: &ServerOptions) -> String {
        toml::to_string(options).unwrap_or_default()
    }

    pub(super) fn from_str(text: &str) -> Option<ServerOptions> {
        toml::from_str(text).ok()
    }
}

type SpawnReply = mpsc::Sender<io::Result<Child>>;

/// Forks the server from a thread that lives as long as the process:
/// `PR_SET_PDEATHSIG` fires when the forking *thread* exits.
fn spawner() -> &'static Mutex<mpsc::Sender<(Command, SpawnReply)>> {
    static SPAWNER: OnceCell<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceCell::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("serve-common-ipc-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static: this loop never ends.
            })
            .expect("cannot start the IPC spawner thread");
        Mutex::new(tx)
    })
}

/// Chooses the address of the server this process will start and exports
/// it ([`ADDR_ENV`], [`MAX_MESSAGE_ENV`]) for children, unless
/// [`ADDR_ENV`] is set already (then this process is a member). Returns
/// whether this process will start the server.
///
/// Call it first thing in `main`, while the process has one thread:
/// changing the environment while other threads may read it is unsound.
/// `#[serve_common::main]` does. [`start`] exports the address itself when
/// this was not called.
pub fn prepare() -> bool {
    let mut state = STATE.lock();
    if state
        .as_ref()
        .is_some_and(|s| s.reserved || s.started.is_some())
    {
        return true;
    }
    if std::env::var_os(ADDR_ENV).is_some() {
        return false;
    }
    let address = new_address();
    std::env::set_var(ADDR_ENV, encode_address(&address));
    std::env::set_var(MAX_MESSAGE_ENV, DEFAULT_MAX_MESSAGE.to_string());
    *state = Some(State {
        address,
        max_message: DEFAULT_MAX_MESSAGE,
        reserved: true,
        started: None,
    });
    true
}

/// Starts the server with the default options; see [`start_with`].
pub fn start() -> Result<u32, IpcError> {
    start_with(ServerOptions::default())
}

/// How to start (and restart) the server.
#[derive(Clone)]
struct Launch {
    program: PathBuf,
    address: Vec<u8>,
    options: ServerOptions,
}

impl Launch {
    /// Starts a server and waits for it to announce its address.
    fn spawn(&self, generation: u64) -> Result<Child, IpcError> {
        let mut command = Command::new(&self.program);
        command
            .env(SERVER_MARKER_ENV, "1")
            .env(PARENT_ENV, std::process::id().to_string())
            .env(OPTIONS_ENV, serde_json_like::to_string(&self.options))
            .env(NAME_ENV, encode_address(&self.address))
            .env(GENERATION_ENV, generation.to_string())
            .env_remove(ADDR_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()
            .lock()
            .send((command, reply_tx))
            .map_err(|_| IpcError::Spawn("the spawner thread is gone".into()))?;
        let mut child = reply_rx
            .recv()
            .map_err(|_| IpcError::Spawn("the spawner thread is gone".into()))?
            .map_err(|e| IpcError::Spawn(format!("{}: {e}", self.program.display())))?;
        // The address line, with a deadline: a program that does not run
        // the server never prints it.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = io::BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(line);
        });
        let line = line_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        if line.trim() != encode_address(&self.address) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(IpcError::Spawn(format!(
                "{} did not announce the address it was given (got {:?}): does its main call ipc::run_server_if_requested() first, and is the address free?",
                self.program.display(),
                line.trim()
            )));
        }
        Ok(child)
    }
}

/// Starts the IPC server process, sets this process up to use it, and
/// exports [`ADDR_ENV`] (and [`MAX_MESSAGE_ENV`]) for children (unless
/// [`prepare`] did). Returns the server's pid. If this process started one
/// already, returns its pid.
///
/// This process keeps the server: a thread waits for it, so a dead server
/// never stays a zombie, and restarts it on the same address when it dies
/// (logged at WARN; at once after a server that ran for a second or more,
/// else after a jittered back-off growing from 0.1 s to at most 5 s), until
/// [`shutdown`].
pub fn start_with(options: ServerOptions) -> Result<u32, IpcError> {
    if std::env::var_os(SERVER_MARKER_ENV).is_some() {
        return Err(IpcError::Spawn(
            "this process was started as the IPC server but runs the application: \
             call ipc::run_server_if_requested() first thing in main"
                .into(),
        ));
    }
    let mut state = STATE.lock();
    if let Some(keeper) = state.as_ref().and_then(|s| s.started.as_ref()) {
        return Ok(keeper.pid.load(std::sync::atomic::Ordering::Acquire));
    }
    let program = match &options.program {
        Some(program) => program.clone(),
        None => std::env::current_exe().map_err(|e| IpcError::Spawn(e.to_string()))?,
    };
    let (address, exported) = match state.as_ref() {
        Some(s) if s.reserved => (s.address.clone(), true),
        _ => (new_address(), false),
    };
    let launch = Launch {
        program,
        address: address.clone(),
        options: options.clone(),
    };
    let child = launch.spawn(0)?;
    let pid = child.id();
    if !exported || options.max_message != DEFAULT_MAX_MESSAGE {
        std::env::set_var(ADDR_ENV, encode_address(&address));
        std::env::set_var(MAX_MESSAGE_ENV, options.max_message.to_string());
    }
    let keeper = Arc::new(Keeper {
        pid: std::sync::atomic::AtomicU32::new(pid),
        ended: Mutex::new(false),
        ended_signal: parking_lot::Condvar::new(),
        drain_timeout: options.drain_timeout,
    });
    let kept = keeper.clone();
    std::thread::Builder::new()
        .name("serve-common-ipc-keeper".into())
        .spawn(move || keep(&launch, child, &kept))
        .map_err(|e| IpcError::Spawn(format!("cannot start the keeper thread: {e}")))?;
    *state = Some(State {
        address,
        max_message: options.max_message,
        reserved: false,
        started: Some(keeper),
    });
    tracing::info!(server_pid = pid, "IPC server started");
    Ok(pid)
}

/// The keeper thread: reaps the server, restarts it until [`shutdown`].
fn keep(launch: &Launch, mut child: Child, keeper: &Keeper) {
    use backon::BackoffBuilder as _;
    use std::sync::atomic::Ordering;
    let backoff = backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        // The jitter adds up to as much again: 5 s at most.
        .with_max_delay(Duration::from_millis(2500))
        .without_max_times();
    let mut delays = backoff.build();
    let mut started = std::time::Instant::now();
    let mut generation = 0;
    loop {
        let pid = child.id();
        let status = child.wait();
        keeper.pid.store(0, Ordering::Release);
        if shutting_down() {
            break;
        }
        let status = match status {
            Ok(status) => status.to_string(),
            Err(error) => error.to_string(),
        };
        let lived = started.elapsed();
        let mut delay = if lived >= QUICK_DEATH {
            delays = backoff.build();
            Duration::ZERO
        } else {
            delays.next().unwrap_or(Duration::from_secs(5))
        };
        tracing::warn!(
            server_pid = pid,
            "IPC server (pid {pid}) exited ({status}) after {lived:.1?}; restarting it{}",
            if delay.is_zero() {
                String::new()
            } else {
                format!(" in {delay:.1?}")
            }
        );
        child = loop {
            if !delay.is_zero() {
                // A shutdown cuts the wait short.
                let deadline = std::time::Instant::now() + delay;
                let mut ended = keeper.ended.lock();
                while !shutting_down()
                    && !keeper
                        .ended_signal
                        .wait_until(&mut ended, deadline)
                        .timed_out()
                {}
            }
            if shutting_down() {
                finish(keeper);
                return;
            }
            generation += 1;
            match launch.spawn(generation) {
                Ok(child) => break child,
                Err(error) => {
                    delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::error!(%error, "cannot restart the IPC server; retrying in {delay:.1?}");
                }
            }
        };
        started = std::time::Instant::now();
        keeper.pid.store(child.id(), Ordering::Release);
        tracing::warn!(
            server_pid = child.id(),
            "IPC server restarted (pid {}) at the same address",
            child.id()
        );
        if shutting_down() {
            let _ = child.kill();
        }
    }
    finish(keeper);
}

fn finish(keeper: &Keeper) {
    *keeper.ended.lock() = true;
    keeper.ended_signal.notify_all();
}

/// The pid of the server this process started (it changes when the server
/// is restarted); `None` if this process did not start one, or while it
/// is being restarted.
pub fn server_pid() -> Option<u32> {
    let state = STATE.lock();
    let pid = state
        .as_ref()?
        .started
        .as_ref()?
        .pid
        .load(std::sync::atomic::Ordering::Acquire);
    (pid != 0).then_some(pid)
}

/// Sets this process up to use a running server: at `address` (base64), or
/// the one in [`ADDR_ENV`]; with neither, starts one ([`start`]).
pub fn setup(address: Option<&str>) -> Result<(), IpcError> {
    let from_env = std::env::var(ADDR_ENV).ok();
    let Some(address) = address.map(str::to_owned).or(from_env) else {
        return start().map(drop);
    };
    let decoded = decode_address(&address)?;
    let max_message = std::env::var(MAX_MESSAGE_ENV)
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE);
    let mut state = STATE.lock();
    match state.as_mut() {
        // The address `prepare` chose for the server this process starts.
        Some(s) if s.reserved && s.address == decoded => {
            drop(state);
            return start().map(drop);
        }
        Some(state) => {
            state.address = decoded;
            state.max_message = max_message;
        }
        None => {
            *state = Some(State {
                address: decoded,
                max_message,
                reserved: false,
                started: None,
            });
        }
    }
    Ok(())
}

/// Whether this process is set up to use a server.
pub fn is_set_up() -> bool {
    STATE.lock().is_some()
}

/// The server's address (base64), if set up.
pub fn address() -> Option<String> {
    STATE.lock().as_ref().map(|s| encode_address(&s.address))
}

/// Sets [`ADDR_ENV`] and [`MAX_MESSAGE_ENV`] on `command`, so the child
/// finds this process's server whatever the environment says.
pub fn configure_command(command: &mut Command) -> &mut Command {
    if let Some(state) = STATE.lock().as_ref() {
        command
            .env(ADDR_ENV, encode_address(&state.address))
            .env(MAX_MESSAGE_ENV, state.max_message.to_string());
    }
    command
}

fn connect(greeting: &Greeting) -> Result<(OwnedFd, usize), IpcError> {
    let (address, max_message) = {
        let state = STATE.lock();
        let state = state.as_ref().ok_or(IpcError::NotSetUp)?;
        (state.address.clone(), state.max_message)
    };
    let fd = socket::connect(&address, JOIN_TIMEOUT).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => IpcError::Timeout(JOIN_TIMEOUT),
        _ => IpcError::Io(e),
    })?;
    // Abstract names are visible to every user: once a server is gone,
    // another uid could bind its name. Talk only to our own uid.
    let (uid, pid) = socket::peer(&fd)?;
    let own = nix::unistd::getuid().as_raw();
    if uid != own {
        tracing::error!(
            server_uid = uid,
            server_pid = pid,
            own_uid = own,
            "the IPC address is served by another user; not connecting"
        );
        return Err(IpcError::Refused);
    }
    let mut hello = Vec::new();
    ciborium::into_writer(greeting, &mut hello).map_err(|e| IpcError::Encode(e.to_string()))?;
    for packet in frame::encode(&hello, max_message)? {
        socket::send(&fd, &packet).map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => IpcError::Refused,
            _ => IpcError::Io(e),
        })?;
    }
    Ok((fd, max_message))
}

/// Reads the server's welcome (at most `timeout`): the member is in the
/// group once it arrives.
fn welcome(fd: &OwnedFd, timeout: Duration) -> Result<Welcome, IpcError> {
    let mut decoder = Decoder::new(4096);
    let mut buffer = vec![0; frame::MAX_PACKET];
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match socket::recv_until(fd, &mut buffer, deadline) {
            Ok(Some(len)) => {
                if let Some(message) = decoder
                    .push(&buffer[..len])
                    .map_err(|e| IpcError::Decode(e.to_string()))?
                {
                    return ciborium::from_reader(&message[..])
                        .map_err(|e| IpcError::Decode(e.to_string()));
                }
            }
            Ok(None) => return Err(IpcError::Refused),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(IpcError::Timeout(timeout))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(IpcError::Refused),
            Err(e) => return Err(IpcError::Io(e)),
        }
    }
}

/// Joins `group`: the returned socket is connected and already a member.
/// The group exists as long as it has members. Waits at most
/// [`JOIN_TIMEOUT`] for the server to take the connection, and as long
/// again for its welcome ([`IpcError::Timeout`]).
pub fn join_group<T>(group: &str) -> Result<GroupSocket<T>, IpcError> {
    join(group, false, JOIN_TIMEOUT).map(|(socket, _)| socket)
}

/// Joins `group`, or rejoins it after the connection broke; the server's
/// welcome comes with the socket.
pub(crate) fn join<T>(
    group: &str,
    rejoin: bool,
    timeout: Duration,
) -> Result<(GroupSocket<T>, Welcome), IpcError> {
    join_as(group, rejoin, false, timeout)
}

/// [`join`], as a sender only when `send_only` (see [`QUEUE_GROUP_PREFIX`]).
pub(crate) fn join_as<T>(
    group: &str,
    rejoin: bool,
    send_only: bool,
    timeout: Duration,
) -> Result<(GroupSocket<T>, Welcome), IpcError> {
    let (fd, _) = connect(&Greeting::Join {
        group: group.to_owned(),
        rejoin,
        send_only,
    })?;
    // Wait until the server has put us in the group; its limit is ours.
    let welcome = welcome(&fd, timeout)?;
    let max_message = usize::try_from(welcome.max_message).unwrap_or(usize::MAX);
    tracing::debug!(group, member = welcome.member, "joined IPC group");
    let socket = GroupSocket {
        conn: Arc::new(Connection {
            fd,
            max_message,
            group: group.to_owned(),
            send_lock: Mutex::new(()),
            recv: Mutex::new((Decoder::new(max_message), vec![0; frame::MAX_PACKET])),
        }),
        _type: PhantomData,
    };
    Ok((socket, welcome))
}

/// [`join_group`] for tokio: the socket's `send` and `recv` are `async`.
/// Joining itself is quick (a local connect and the server's welcome) and
/// runs in place. Needs a tokio runtime with IO enabled.
///
/// Needs the `tokio` feature.
#[cfg(feature = "tokio")]
pub async fn join_group_async<T>(group: &str) -> Result<AsyncGroupSocket<T>, IpcError> {
    let joined = join_group::<T>(group)?;
    let conn = Arc::try_unwrap(joined.conn)
        .unwrap_or_else(|_| unreachable!("a fresh socket has one handle"));
    AsyncGroupSocket::new(conn.fd, conn.group, conn.max_message)
}

/// Stops the server. Only the process that started it should call this
/// (on its way out). The server forwards what its members sent before, and
/// waits up to [`ServerOptions::drain_timeout`] for them to read what is
/// queued for them. A process that started the server waits for it to
/// exit (killing it if it does not exit in time), and stops restarting it.
pub fn shutdown() -> Result<(), IpcError> {
    SHUTTING_DOWN.store(true, std::sync::atomic::Ordering::SeqCst);
    let asked = connect(&Greeting::Shutdown);
    let keeper = STATE.lock().as_mut().and_then(|s| s.started.take());
    if let Some(keeper) = &keeper {
        // Wakes a keeper waiting to restart the server: it stops instead.
        let _ended = keeper.ended.lock();
        keeper.ended_signal.notify_all();
    }
    let Some(keeper) = keeper else {
        return asked.map(drop);
    };
    let kill = || {
        let pid = keeper.pid.load(std::sync::atomic::Ordering::Acquire);
        if let Ok(pid @ 1..) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    if let Err(error) = &asked {
        tracing::warn!(%error, "cannot ask the IPC server to stop; killing it");
        kill();
    }
    let pid = keeper.pid.load(std::sync::atomic::Ordering::Acquire);
    let mut ended = keeper.ended.lock();
    let deadline = std::time::Instant::now() + keeper.drain_timeout + Duration::from_secs(3);
    while !*ended
        && !keeper
            .ended_signal
            .wait_until(&mut ended, deadline)
            .timed_out()
    {}
    if !*ended {
        tracing::warn!(
            server_pid = pid,
            "the IPC server did not stop in time; killing it"
        );
        kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !*ended
            && !keeper
                .ended_signal
                .wait_until(&mut ended, deadline)
                .timed_out()
        {}
    }
    tracing::info!(server_pid = pid, "IPC server stopped");
    Ok(())
}

/// Set once this process asked the server to stop: connections closing
/// afterwards are expected.
static SHUTTING_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process asked the server to stop.
pub(crate) fn shutting_down() -> bool {
    SHUTTING_DOWN.load(std::sync::atomic::Ordering::SeqCst)
}

struct Connection {
    fd: OwnedFd,
    max_message: usize,
    group: String,
    send_lock: Mutex<()>,
    recv: Mutex<(Decoder, Vec<u8>)>,
}

/// A connection that is a member of a group, sending and receiving `T`s
/// (CBOR). Cloning gives another handle to the same connection: one thread
/// may send while another receives.
pub struct GroupSocket<T> {
    conn: Arc<Connection>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for GroupSocket<T> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for GroupSocket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSocket")
            .field("group", &self.conn.group)
            .finish_non_exhaustive()
    }
}

impl<T> GroupSocket<T> {
    /// The group's id.
    pub fn group(&self) -> &str {
        &self.conn.group
    }

    /// The largest message this socket sends or accepts.
    pub fn max_message(&self) -> usize {
        self.conn.max_message
    }

    /// Sends raw bytes to the other members.
    pub fn send_bytes(&self, message: &[u8]) -> Result<(), IpcError> {
        let packets = frame::encode(message, self.conn.max_message)?;
        let _whole = self.conn.send_lock.lock();
        for packet in &packets {
            socket::send(&self.conn.fd, packet).map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => IpcError::Closed,
                _ => IpcError::Io(e),
            })?;
        }
        Ok(())
    }

    /// Sends one packet (a whole message, tag included, at most
    /// [`frame::MAX_PACKET`] bytes) without waiting: `Ok(false)` when the
    /// socket has no room for it now (nothing was sent).
    pub(crate) fn try_send_packet(&self, packet: &[u8]) -> Result<bool, IpcError> {
        let _whole = self.conn.send_lock.lock();
        socket::try_send(&self.conn.fd, packet).map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => IpcError::Closed,
            _ => IpcError::Io(e),
        })
    }

    /// Receives the next message's bytes (blocking). Malformed packets are
    /// logged and skipped.
    pub fn recv_bytes(&self) -> Result<Vec<u8>, IpcError> {
        let mut guard = self.conn.recv.lock();
        let (decoder, buffer) = &mut *guard;
        loop {
            match socket::recv(&self.conn.fd, buffer) {
                Ok(Some(len)) => {
                    let pushed = decoder.push(&buffer[..len]);
                    if let Some(error) = decoder.take_dropped() {
                        tracing::warn!(group = %self.conn.group, %error, "incomplete IPC message dropped");
                    }
                    match pushed {
                        Ok(Some(message)) => return Ok(message),
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(group = %self.conn.group, %error, "malformed IPC frame dropped");
                        }
                    }
                }
                Ok(None) => return Err(IpcError::Closed),
                Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(group = %self.conn.group, %error, "malformed IPC packet dropped");
                    decoder.reset();
                }
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(IpcError::Closed)
                }
                Err(error) => return Err(IpcError::Io(error)),
            }
        }
    }

    /// Closes the connection: this member leaves the group, and a `recv`
    /// blocked on another thread returns [`IpcError::Closed`].
    pub fn close(&self) {
        socket::shutdown(&self.conn.fd);
    }
}

impl<T: Serialize> GroupSocket<T> {
    /// Sends `value` to every other member of the group.
    pub fn send(&self, value: &T) -> Result<(), IpcError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(value, &mut bytes).map_err(|e| IpcError::Encode(e.to_string()))?;
        self.send_bytes(&bytes)
    }
}

impl<T: DeserializeOwned> GroupSocket<T> {
    /// Receives the next message (blocking). A message that is not a `T` is
    /// an [`IpcError::Decode`]; the connection stays usable.
    pub fn recv(&self) -> Result<T, IpcError> {
        let bytes = self.recv_bytes()?;
        ciborium::from_reader(&bytes[..]).map_err(|e| IpcError::Decode(e.to_string()))
    }
}
