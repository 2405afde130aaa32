//! Message-based IPC over Unix sockets: the seed's `ipc` module.
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
//! namespace, and prints the address (base64) on its standard output, which
//! `start` reads. `start` then exports `SERVCOM_IPC_ADDR` so child processes
//! find the server with [`setup`]; call it early, before other threads read
//! the environment. [`configure_command`] sets the variable on a `Command`
//! explicitly.
//!
//! The server ignores `SIGINT` (a `^C` reaches the whole process group; the
//! parent decides when the server stops, with [`shutdown`]) and dies with
//! its parent (`PR_SET_PDEATHSIG`; `start` forks it from a thread that lives
//! as long as the process). Only processes of the server's uid may connect
//! (`SO_PEERCRED`, checked on accept); others are refused with a log line.
//!
//! # Guarantees and limits
//!
//! - Messages are CBOR (self-describing: `toml::Value` and other
//!   `deserialize_any` types round-trip), framed across packets, at most
//!   [`ServerOptions::max_message`] bytes (16 MiB by default); a larger send
//!   is an error for the sender. See [`frame`] for the wire format.
//! - A connection that never greets is closed after
//!   [`ServerOptions::greeting_timeout`] and delays no one.
//! - Each member has an outgoing queue of [`ServerOptions::queue_bytes`].
//!   A sender facing a full queue waits; a member whose queue stays full
//!   for [`ServerOptions::stall_timeout`] is disconnected (that member only,
//!   logged), and the others lose nothing.
//! - A malformed packet or frame is logged and dropped, by the server and
//!   by [`GroupSocket::recv`]; neither crashes.
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

/// The default maximum message size: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;

/// The first message of every connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Greeting {
    Join { group: String },
    Shutdown,
}

/// The server's answer to a `Join`, sent once the member is in the group:
/// `join_group` returns only then, so the group includes it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Welcome {
    pub(crate) member: u64,
    pub(crate) max_message: u64,
}

/// How the server behaves; [`start_with`] passes it to the server process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerOptions {
    /// The largest message, in bytes (default 16 MiB).
    pub max_message: usize,
    /// Each member's outgoing queue, in bytes (default 64 MiB).
    pub queue_bytes: usize,
    /// How long a member's queue may stay full before it is disconnected
    /// (default 10 s).
    pub stall_timeout: Duration,
    /// How long a new connection has to greet (default 2 s).
    pub greeting_timeout: Duration,
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
            program: None,
        }
    }
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
}

struct Started {
    pid: u32,
    child: Child,
}

struct State {
    address: Vec<u8>,
    max_message: usize,
    started: Option<Started>,
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

/// If this process was started as the IPC server, runs the server and
/// never returns; otherwise returns at once. Call it first thing in `main`
/// (the `#[serve_common::main]` macro does).
pub fn run_server_if_requested() {
    if std::env::var_os(SERVER_MARKER_ENV).as_deref() != Some("1".as_ref()) {
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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let options: ServerOptions = std::env::var(OPTIONS_ENV)
        .ok()
        .and_then(|o| serde_json_like::from_str(&o))
        .unwrap_or_default();
    let name = format!(
        "serve-common-ipc-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    match socket::listen(name.as_bytes()) {
        Ok(listener) => server::serve_and_announce(listener, name.as_bytes(), options),
        Err(error) => {
            tracing::error!(%error, "IPC server cannot listen");
            std::process::exit(1);
        }
    }
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

/// Starts the server with the default options; see [`start_with`].
pub fn start() -> Result<u32, IpcError> {
    start_with(ServerOptions::default())
}

/// Starts the IPC server process, sets this process up to use it, and
/// exports [`ADDR_ENV`] (and [`MAX_MESSAGE_ENV`]) for children. Returns the
/// server's pid. If this process started one already, returns its pid.
pub fn start_with(options: ServerOptions) -> Result<u32, IpcError> {
    if std::env::var_os(SERVER_MARKER_ENV).is_some() {
        return Err(IpcError::Spawn(
            "this process was started as the IPC server but runs the application: \
             call ipc::run_server_if_requested() first thing in main"
                .into(),
        ));
    }
    let mut state = STATE.lock();
    if let Some(started) = state.as_ref().and_then(|s| s.started.as_ref()) {
        return Ok(started.pid);
    }
    let program = match &options.program {
        Some(program) => program.clone(),
        None => std::env::current_exe().map_err(|e| IpcError::Spawn(e.to_string()))?,
    };
    let mut command = Command::new(&program);
    command
        .env(SERVER_MARKER_ENV, "1")
        .env(PARENT_ENV, std::process::id().to_string())
        .env(OPTIONS_ENV, serde_json_like::to_string(&options))
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
        .map_err(|e| IpcError::Spawn(format!("{}: {e}", program.display())))?;
    // The address line, with a deadline: a program that does not run the
    // server never prints it.
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
    let address = match decode_address(&line) {
        Ok(address) if !line.trim().is_empty() => address,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(IpcError::Spawn(format!(
                "{} did not announce an address (got {:?}): does its main call ipc::run_server_if_requested() first?",
                program.display(),
                line.trim()
            )));
        }
    };
    let pid = child.id();
    std::env::set_var(ADDR_ENV, line.trim());
    std::env::set_var(MAX_MESSAGE_ENV, options.max_message.to_string());
    *state = Some(State {
        address,
        max_message: options.max_message,
        started: Some(Started { pid, child }),
    });
    tracing::info!(server_pid = pid, "IPC server started");
    Ok(pid)
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
        Some(state) => {
            state.address = decoded;
            state.max_message = max_message;
        }
        None => {
            *state = Some(State {
                address: decoded,
                max_message,
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
    let fd = socket::connect(&address)?;
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

/// Reads the server's welcome: the member is in the group once it arrives.
fn welcome(fd: &OwnedFd) -> Result<Welcome, IpcError> {
    let mut decoder = Decoder::new(4096);
    let mut buffer = vec![0; frame::MAX_PACKET];
    loop {
        match socket::recv(fd, &mut buffer) {
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
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(IpcError::Refused),
            Err(e) => return Err(IpcError::Io(e)),
        }
    }
}

/// Joins `group`: the returned socket is connected and already a member.
/// The group exists as long as it has members.
pub fn join_group<T>(group: &str) -> Result<GroupSocket<T>, IpcError> {
    let (fd, _) = connect(&Greeting::Join {
        group: group.to_owned(),
    })?;
    // Wait until the server has put us in the group; its limit is ours.
    let welcome = welcome(&fd)?;
    let max_message = usize::try_from(welcome.max_message).unwrap_or(usize::MAX);
    tracing::debug!(group, member = welcome.member, "joined IPC group");
    Ok(GroupSocket {
        conn: Arc::new(Connection {
            fd,
            max_message,
            group: group.to_owned(),
            send_lock: Mutex::new(()),
            recv: Mutex::new((Decoder::new(max_message), vec![0; frame::MAX_PACKET])),
        }),
        _type: PhantomData,
    })
}

/// [`join_group`] for tokio: the socket's `send` and `recv` are `async`.
/// Joining itself is quick (a local connect and the server's welcome) and
/// runs in place. Needs a tokio runtime with IO enabled.
#[cfg(feature = "tokio")]
pub async fn join_group_async<T>(group: &str) -> Result<AsyncGroupSocket<T>, IpcError> {
    let joined = join_group::<T>(group)?;
    let conn = Arc::try_unwrap(joined.conn)
        .unwrap_or_else(|_| unreachable!("a fresh socket has one handle"));
    AsyncGroupSocket::new(conn.fd, conn.group, conn.max_message)
}

/// Stops the server. Only the process that started it should call this
/// (on its way out); it waits for a server it started to exit.
pub fn shutdown() -> Result<(), IpcError> {
    SHUTTING_DOWN.store(true, std::sync::atomic::Ordering::Relaxed);
    connect(&Greeting::Shutdown)?;
    let started = STATE.lock().as_mut().and_then(|s| s.started.take());
    if let Some(mut started) = started {
        let _ = started.child.wait();
        tracing::info!(server_pid = started.pid, "IPC server stopped");
    }
    Ok(())
}

/// Set once this process asked the server to stop: connections closing
/// afterwards are expected.
static SHUTTING_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process asked the server to stop.
pub(crate) fn shutting_down() -> bool {
    SHUTTING_DOWN.load(std::sync::atomic::Ordering::Relaxed)
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
