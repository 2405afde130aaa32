//! Helpers shared by the integration tests: a log capture (so tests can
//! check what was logged) and a minimal `block_on` for awaiting futures.

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

/// Log output kept in memory, as plain text lines: give
/// [`make_writer`](Self::make_writer) to a subscriber or an output.
#[derive(Clone, Default)]
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// The captured lines that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        let buffer = self.buffer.lock().unwrap();
        String::from_utf8_lossy(&buffer)
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// A `MakeWriter` that appends to this capture.
    pub fn make_writer(&self) -> impl Fn() -> CaptureWriter + Send + Sync + 'static {
        let buffer = self.buffer.clone();
        move || CaptureWriter(buffer.clone())
    }
}

/// Appends to a [`LogCapture`].
pub struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a global subscriber that captures every
/// log line at DEBUG and above, and returns the capture.
pub fn logs() -> &'static LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = LogCapture::default();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(capture.make_writer())
            .init();
        capture
    })
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

/// A child process driven line by line: commands on its stdin, reports on
/// its stdout (and, optionally, its stderr captured for log checks).
pub struct Proc {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<(std::thread::JoinHandle<()>, StderrLines)>,
    seen: Vec<String>,
}

/// A child's stderr lines so far, and a signal when one arrives.
type StderrLines = Arc<(Mutex<Vec<String>>, std::sync::Condvar)>;

impl Proc {
    /// Spawns `command` with piped stdin and stdout; stderr is captured
    /// when `capture_stderr`, else inherited.
    pub fn spawn(command: &mut std::process::Command, capture_stderr: bool) -> Self {
        use std::process::Stdio;
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        if capture_stderr {
            command.stderr(Stdio::piped());
        }
        let mut child = command.spawn().expect("spawn helper");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = child.stderr.take().map(|stderr| {
            let lines: StderrLines = Arc::default();
            let sink = lines.clone();
            let reader = std::thread::spawn(move || {
                for line in
                    std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok)
                {
                    sink.0.lock().unwrap().push(line);
                    sink.1.notify_all();
                }
            });
            (reader, lines)
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to helper");
        stdin.flush().unwrap();
    }

    /// Closes the child's stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits (at most 60 s) for a line starting with `prefix` and returns
    /// it; earlier lines are kept in [`seen`](Self::seen).
    pub fn expect(&mut self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("no line starting with {prefix:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Like [`expect`](Self::expect), but also accepts a line seen before:
    /// for lines that may come in either order.
    pub fn expect_seen(&mut self, prefix: &str) -> String {
        match self.seen.iter().find(|l| l.starts_with(prefix)) {
            Some(line) => line.clone(),
            None => self.expect(prefix),
        }
    }

    /// Waits (at most 60 s) for a line equal to `line`, or finds it among
    /// the lines seen before (for lines that may come in any order).
    pub fn expect_line(&mut self, line: &str) {
        if self.seen.iter().any(|l| l == line) {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(got) => {
                    let found = got == line;
                    self.seen.push(got);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!("no line {line:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Every line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Waits (at most 60 s) for a line of the captured stderr that
    /// contains every one of `needles`, among lines from index `from` on;
    /// returns it and its index.
    pub fn expect_stderr(&self, from: usize, needles: &[&str]) -> (usize, String) {
        let (lines, changed) = &**self
            .stderr
            .as_ref()
            .map(|(_, lines)| lines)
            .expect("stderr captured");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut lines = lines.lock().unwrap();
        loop {
            if let Some((i, line)) = lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| needles.iter().all(|n| l.contains(n)))
            {
                return (i, line.clone());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                panic!(
                    "no stderr line with {needles:?}; stderr:\n{}",
                    lines.join("\n")
                );
            }
            lines = changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// The captured stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr
            .as_ref()
            .map(|(_, lines)| lines.0.lock().unwrap().join("\n"))
            .unwrap_or_default()
    }

    /// Waits for the child to exit and returns its captured stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        self.stdin = None;
        let status = self.child.wait().expect("wait for helper");
        let stderr = match self.stderr.take() {
            Some((reader, lines)) => {
                reader.join().unwrap();
                let lines = lines.0.lock().unwrap();
                lines.join("\n") + "\n"
            }
            None => String::new(),
        };
        (status, stderr)
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (at most 10 s) until the process `pid` is stopped (state `T`):
/// `kill(SIGSTOP)` returns before the signal has taken effect, and a
/// process still running in that window may accept a connection meant to
/// find it stopped. Its state has no notification: read again shortly.
pub fn wait_stopped(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stopped = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
            })
            .unwrap_or(false);
        if stopped {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// What the IPC tests and their helper process share.
pub mod ipc_support {
    use serde::{Deserialize, Serialize};
    use serve_common::ipc::{self, GroupSocket, ServerOptions};

    /// A numbered message.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Msg {
        /// The sender's id (a pid, or a number the test chose).
        pub from: u32,
        /// The sender's sequence number.
        pub seq: u64,
        /// Content that [`pattern`] can check.
        #[serde(with = "serde_bytes")]
        pub body: Vec<u8>,
    }

    /// Content that depends on the sender and sequence, to catch parts of
    /// messages mixed up.
    pub fn pattern(id: u32, seq: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                (i as u64)
                    .wrapping_mul(31)
                    .wrapping_add(u64::from(id) * 7 + seq * 13) as u8
            })
            .collect()
    }

    /// A raw SEQPACKET connection to the listener at `address` (base64):
    /// no greeting, nothing of the library's.
    pub fn raw_connect(address: &str) -> std::io::Result<std::os::fd::OwnedFd> {
        use base64::Engine as _;
        use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
        let name = base64::engine::general_purpose::STANDARD
            .decode(address)
            .map_err(std::io::Error::other)?;
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &UnixAddr::new_abstract(&name)?,
        )?;
        Ok(fd)
    }

    /// A `helper parent <flags>` process that starts (and keeps) its own
    /// server: the process, the server's pid and its address. Its stderr,
    /// the server's log and the keeper's, is captured.
    pub fn parent(helper: &str, flags: &[&str]) -> (crate::Proc, u32, String) {
        let mut command = std::process::Command::new(helper);
        command.arg("parent").args(flags).env_remove(ipc::ADDR_ENV);
        let mut parent = crate::Proc::spawn(&mut command, true);
        let line = parent.expect("server ");
        let mut parts = line.split_whitespace().skip(1);
        let pid = parts.next().unwrap().parse().unwrap();
        let address = parts.next().unwrap().to_owned();
        (parent, pid, address)
    }

    /// Stops a [`parent`]'s server and returns its log.
    pub fn stop(mut parent: crate::Proc) -> String {
        parent.send("shutdown");
        parent.expect("stopped");
        let (status, stderr) = parent.finish();
        assert!(status.success(), "parent failed: {stderr}");
        stderr
    }

    /// `helper events` processes of one service on the server at
    /// `address`, sharing one config file.
    pub struct Members {
        /// The scratch directory holding the config file.
        pub dir: tempfile::TempDir,
        /// The config file.
        pub config: std::path::PathBuf,
        /// The processes, each past its `ready` line.
        pub processes: Vec<crate::Proc>,
    }

    /// One events process per entry of `wraps`, each run through that
    /// prefix (`["unshare", "--pid", ...]`, or nothing), with `config` as
    /// the config file; stderr captured when `capture_stderr`.
    pub fn events_members(
        helper: &str,
        address: &str,
        wraps: &[&[&str]],
        config: &str,
        capture_stderr: bool,
    ) -> Members {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let processes = wraps
            .iter()
            .map(|wrap| {
                let mut command = match wrap.split_first() {
                    Some((program, args)) => {
                        let mut command = std::process::Command::new(program);
                        command.args(args).arg(helper);
                        command
                    }
                    None => std::process::Command::new(helper),
                };
                command
                    .arg("events")
                    .env(ipc::ADDR_ENV, address)
                    .env("SERVCOM_TEST_CONFIG", &path);
                let mut process = crate::Proc::spawn(&mut command, capture_stderr);
                process.expect("ready");
                process
            })
            .collect();
        Members {
            dir,
            config: path,
            processes,
        }
    }

    /// Starts this process's server (run by `helper`) once; its address.
    pub fn shared_server(helper: &str) -> &'static str {
        static ADDRESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        ADDRESS.get_or_init(|| {
            ipc::start_with(ServerOptions {
                program: Some(helper.into()),
                ..ServerOptions::default()
            })
            .unwrap();
            ipc::address().unwrap()
        })
    }

    /// Sends `count` messages as `me` (on another thread) while receiving
    /// `count` from each of `peers` other members, checking that each
    /// arrives once, in its sender's order, intact. Returns how many came.
    pub fn exchange(socket: &GroupSocket<Msg>, me: u32, count: u64, peers: usize) -> u64 {
        let sender = socket.clone();
        let sending = std::thread::spawn(move || {
            for seq in 0..count {
                let body = pattern(me, seq, 64);
                sender
                    .send(&Msg {
                        from: me,
                        seq,
                        body,
                    })
                    .unwrap();
            }
        });
        let mut next = std::collections::HashMap::new();
        let mut total = 0;
        while total < count * peers as u64 {
            let msg = socket.recv().unwrap();
            assert_ne!(msg.from, me, "a member never receives its own message");
            let expected = next.entry(msg.from).or_insert(0);
            assert_eq!(
                msg.seq, *expected,
                "out of order or duplicated from {}",
                msg.from
            );
            assert_eq!(msg.body, pattern(msg.from, msg.seq, 64));
            *expected += 1;
            total += 1;
        }
        sending.join().unwrap();
        assert_eq!(next.len(), peers);
        total
    }
}

/// The example service as a real process, and a minimal HTTP/1.1 client.
pub mod http_support {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    /// How long a test waits for something the service should do at once.
    pub const PATIENCE: Duration = Duration::from_secs(30);

    /// One HTTP response.
    #[derive(Debug, Clone)]
    pub struct Response {
        /// The status code.
        pub status: u16,
        /// Headers, names lower-cased, in order.
        pub headers: Vec<(String, String)>,
        /// The body as text.
        pub body: String,
    }

    impl Response {
        /// The first value of header `name` (any case).
        pub fn header(&self, name: &str) -> Option<&str> {
            let name = name.to_ascii_lowercase();
            self.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Writes a request (`Connection: close`) on a new connection.
    pub fn send_request(
        address: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> TcpStream {
        let mut stream = TcpStream::connect(address).expect("connect to the service");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or(""));
        stream.write_all(request.as_bytes()).unwrap();
        stream
    }

    /// Reads a whole response (the server closes the connection).
    pub fn read_response(stream: TcpStream) -> Response {
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut body = Vec::new();
        reader.read_to_end(&mut body).unwrap();
        Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// One request, its response.
    pub fn request(
        address: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Response {
        read_response(send_request(address, method, path, headers, body))
    }

    /// `GET path`.
    pub fn get(address: SocketAddr, path: &str) -> Response {
        request(address, "GET", path, &[], None)
    }

    /// `POST path` with a JSON body.
    pub fn post_json(address: SocketAddr, path: &str, body: &str) -> Response {
        request(
            address,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body),
        )
    }

    /// The example service running in a scratch directory with its own
    /// `config.toml`, stderr (its log) captured line by line.
    pub struct Service {
        child: Child,
        /// The scratch directory (config file, log files).
        pub dir: tempfile::TempDir,
        /// Where it listens.
        pub address: SocketAddr,
        log: Arc<(Mutex<Vec<String>>, Condvar)>,
    }

    impl Service {
        /// Starts `program` (the example: `env!("CARGO_BIN_EXE_example_service")`)
        /// with `config` (TOML; `server.bind` is set to a free port unless
        /// given) and waits until it listens.
        pub fn start(program: &str, config: &str) -> Self {
            Self::start_with(program, config, |_| {})
        }

        /// Like [`start`](Self::start), with `adjust` applied to the command
        /// before it is spawned.
        pub fn start_with(program: &str, config: &str, adjust: impl FnOnce(&mut Command)) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let config = if config.contains("bind") {
                config.to_owned()
            } else if config.contains("[server]") {
                config.replacen("[server]", "[server]\nbind = \"127.0.0.1:0\"", 1)
            } else {
                format!("{config}\n[server]\nbind = \"127.0.0.1:0\"\n")
            };
            let mut command = command_in(program, dir.path(), &config);
            adjust(&mut command);
            let mut child = command.spawn().expect("spawn the example service");
            let stderr = child.stderr.take().unwrap();
            let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if std::env::var_os("SERVICE_LOG").is_some() {
                        eprintln!("service: {line}");
                    }
                    sink.0.lock().unwrap().push(line);
                    sink.1.notify_all();
                }
            });
            let mut service = Self {
                child,
                dir,
                address: "127.0.0.1:1".parse().unwrap(),
                log,
            };
            let line = service.wait_log("listening on http://");
            let address = line
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"));
            service.address = reachable(address);
            service
        }

        /// The `count` worker pids the supervisor reported at start-up,
        /// once each worker says it listens.
        pub fn worker_pids(&self, count: usize) -> std::collections::BTreeSet<u32> {
            let line = self.wait_log("worker processes [");
            let list = line
                .split('[')
                .next_back()
                .unwrap()
                .split(']')
                .next()
                .unwrap();
            let pids: std::collections::BTreeSet<u32> =
                list.split(',').map(|p| p.trim().parse().unwrap()).collect();
            assert_eq!(pids.len(), count, "{line}");
            for pid in &pids {
                // `:port`: the log shows the bound address (`0.0.0.0`...).
                self.wait_log(&format!(":{} (pid {pid})", self.address.port()));
            }
            pids
        }

        /// Where the management endpoints listen (`management.bind`):
        /// waits for the line that says so.
        pub fn management_address(&self) -> SocketAddr {
            let line = self.wait_log("management endpoints on http://");
            line.split("management endpoints on http://")
                .nth(1)
                .and_then(|rest| rest.split([' ', ',']).next())
                .and_then(|a| a.parse().ok())
                .map(reachable)
                .unwrap_or_else(|| panic!("no address in {line:?}"))
        }

        /// The config file.
        pub fn config_path(&self) -> PathBuf {
            self.dir.path().join("config.toml")
        }

        /// The scratch directory.
        pub fn path(&self) -> &Path {
            self.dir.path()
        }

        /// The service's (supervisor's) pid.
        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Waits for a log line containing `needle`; returns it.
        pub fn wait_log(&self, needle: &str) -> String {
            self.wait_log_after(0, needle)
        }

        /// Waits for a log line containing `needle` among lines from index
        /// `from` on; returns it.
        pub fn wait_log_after(&self, from: usize, needle: &str) -> String {
            let deadline = Instant::now() + PATIENCE;
            let (lines, changed) = &*self.log;
            let mut lines = lines.lock().unwrap();
            loop {
                if let Some(line) = lines.iter().skip(from).find(|l| l.contains(needle)) {
                    return line.clone();
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    panic!(
                        "no log line with {needle:?}; the log:\n{}",
                        lines.join("\n")
                    );
                }
                lines = changed.wait_timeout(lines, left).unwrap().0;
            }
        }

        /// Every log line so far.
        pub fn log(&self) -> Vec<String> {
            self.log.0.lock().unwrap().clone()
        }

        /// Sends `signal` to the service.
        pub fn signal(&self, signal: nix::sys::signal::Signal) {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
        }

        /// Waits for the service to exit; after [`PATIENCE`] a watchdog
        /// kills it (so the status shows SIGKILL and the test fails).
        pub fn wait_exit(&mut self) -> ExitStatus {
            let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
            let (exited, watch) = std::sync::mpsc::channel::<()>();
            std::thread::spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    watch.recv_timeout(PATIENCE)
                {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            });
            let status = self.child.wait().unwrap();
            drop(exited);
            status
        }
    }

    /// `program` to run in `dir` with `config` (written to
    /// `dir/config.toml`), its standard error piped, no IPC address
    /// inherited.
    fn command_in(program: &str, dir: &Path, config: &str) -> Command {
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut command = Command::new(program);
        command
            .current_dir(dir)
            .env("SERVE_COMMON_CONFIG", dir.join("config.toml"))
            .env("NO_COLOR", "1")
            .env_remove("SERVCOM_IPC_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `program` with `config` (TOML) in a scratch directory; it
    /// must exit non-zero: its stderr.
    pub fn start_fails(program: &str, config: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let child = command_in(program, dir.path(), config).spawn().unwrap();
        let output = output_within(child, PATIENCE);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "it started: {stderr}");
        stderr
    }

    /// Waits for `child` and its output; after `patience` a watchdog kills
    /// it with SIGKILL (so a hung child fails the test instead of hanging it).
    pub fn output_within(child: Child, patience: Duration) -> std::process::Output {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (done, watch) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(patience) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        });
        let output = child.wait_with_output().expect("wait for the child");
        drop(done);
        output
    }

    /// A listener's address as a client reaches it: `0.0.0.0` (any
    /// address) through loopback.
    fn reachable(address: SocketAddr) -> SocketAddr {
        match address.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => {
                SocketAddr::from(([127, 0, 0, 1], address.port()))
            }
            ip if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, address.port()))
            }
            _ => address,
        }
    }

    impl Drop for Service {
        fn drop(&mut self) {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    /// The pids of the processes whose parent is `parent`.
    pub fn children_of(parent: u32) -> Vec<u32> {
        let mut children = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.first() != Some(&"Z")
                && fields.get(1).and_then(|p| p.parse().ok()) == Some(parent)
            {
                children.push(pid);
            }
        }
        children
    }
}
