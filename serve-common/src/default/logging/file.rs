//! A log file that several processes write and rotate together.
//!
//! Every process of a service (the supervisor, the workers, the IPC
//! server) opens the one configured file with `O_APPEND` and writes whole
//! lines. A write happens under an exclusive `flock` on a lock file beside
//! it (`.<name>.lock`), and so does a rotation; before writing, a process
//! checks that its descriptor is still the file at the path (device and
//! inode) and reopens it if not. So:
//! - each line is whole, in exactly one file (a batch of lines is written
//!   in one go while no other process can write);
//! - a rotated file is never written again: the process that rotates holds
//!   the lock, and every other one sees the new file before its next write;
//! - a file passes `max_bytes` only by a single line longer than that: a
//!   batch that would overflow the file is split at a line, and the rest
//!   goes to a fresh file;
//! - `keep` rotated files at most (`name.1` the newest), whoever rotates.
//!
//! A failure (the directory or the file not writable, a full disk, a
//! rotation refused) never panics and never blocks the service: it is
//! reported once as an ERROR line on standard error and on the `logging`
//! health check; lines wait in a bounded buffer (1 MiB) and beyond are
//! counted as lost; the file is opened again with a back-off, and once it
//! is writable again a WARNING line in it says how many lines were lost.
//! A file that cannot rotate keeps growing rather than losing lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lines waiting beyond which a batch is written at once.
const BATCH_BYTES: usize = 64 << 10;
/// Lines kept while the file cannot be written; beyond, counted as lost.
const MAX_PENDING: usize = 1 << 20;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// What a file output reports to the health check and to [`super::health`].
#[derive(Debug)]
pub(crate) struct FileStatus {
    #[cfg_attr(not(feature = "actix"), allow(dead_code))]
    pub(crate) path: PathBuf,
    /// The failure going on, if any.
    pub(crate) failing: Mutex<Option<String>>,
    /// Lines that could not be written (ever).
    pub(crate) lost: AtomicU64,
    /// Lines written.
    pub(crate) written: AtomicU64,
    /// Rotations this process made.
    pub(crate) rotations: AtomicU64,
}

/// The writer behind one file output (on the logging thread).
pub(crate) struct SharedFile {
    path: PathBuf,
    lock_path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<(File, (u64, u64))>,
    lock: Option<File>,
    /// Whole lines not yet written.
    buf: Vec<u8>,
    status: Arc<FileStatus>,
    /// Lines lost since the failure was reported (said in the file once
    /// it works again).
    lost_since: u64,
    retry_at: Option<Instant>,
    retry: Duration,
    /// While rotating fails: when to try again.
    rotate_retry_at: Option<Instant>,
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// A line in the log format, for what the writer says about itself (it
/// cannot log through `tracing`: it is the logging).
pub(super) fn own_line(level: &str, message: &str) -> String {
    format!(
        "[{}] [{level:<8}] [{}] {message}\n",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.3f"),
        std::process::id()
    )
}

impl SharedFile {
    /// A writer for `path`: the file and its lock file are opened (made)
    /// now, so what the caller can fix is an error at start-up.
    pub(crate) fn new(path: PathBuf, max_bytes: usize, keep: usize) -> io::Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a log file needs a name"))?
            .to_string_lossy()
            .into_owned();
        let lock_path = path.with_file_name(format!(".{name}.lock"));
        let status = Arc::new(FileStatus {
            path: path.clone(),
            failing: Mutex::new(None),
            lost: AtomicU64::new(0),
            written: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
        });
        let mut file = Self {
            path,
            lock_path,
            max_bytes: max_bytes.max(1) as u64,
            keep,
            file: None,
            lock: None,
            buf: Vec::new(),
            status,
            lost_since: 0,
            retry_at: None,
            retry: FIRST_RETRY,
            rotate_retry_at: None,
        };
        file.open_lock()?;
        file.current()?;
        Ok(file)
    }

    pub(crate) fn status(&self) -> Arc<FileStatus> {
        self.status.clone()
    }

    fn open_lock(&mut self) -> io::Result<&File> {
        if self.lock.is_none() {
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&self.lock_path)?;
            self.lock = Some(lock);
        }
        Ok(self.lock.as_ref().expect("just set"))
    }

    /// Writes what is buffered, under the lock.
    fn commit(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            self.shed();
            return;
        }
        match self.write_locked() {
            Ok(()) => self.recovered(),
            Err(error) => {
                self.failed(&error);
                self.shed();
            }
        }
    }

    fn write_locked(&mut self) -> io::Result<()> {
        self.open_lock()?;
        let lock = self.lock.take().expect("open");
        let result = lock.lock().and_then(|()| {
            let written = self.write_all_lines();
            let _ = lock.unlock();
            written
        });
        self.lock = Some(lock);
        result
    }

    /// With the lock held: the current file, then the lines, rotating
    /// where a line would overflow it.
    fn write_all_lines(&mut self) -> io::Result<()> {
        self.current()?;
        let mut start = 0;
        while start < self.buf.len() {
            let (file, _) = self.file.as_ref().expect("current");
            let size = file.metadata()?.len();
            let room = self.max_bytes.saturating_sub(size) as usize;
            let end = fit(&self.buf[start..], room).map(|n| start + n);
            let end = match end {
                Some(end) => end,
                None if size == 0 => {
                    // A single line over max_bytes: alone in its file.
                    start + line_end(&self.buf[start..])
                }
                None => {
                    if self.rotate_retry_at.is_some_and(|at| Instant::now() < at) {
                        // Rotation failing: grow rather than lose lines.
                        self.buf.len()
                    } else {
                        match self.rotate() {
                            Ok(()) => continue,
                            Err(error) => {
                                self.rotate_retry_at = Some(Instant::now() + self.retry);
                                self.retry = (self.retry * 2).min(MAX_RETRY);
                                self.report(&format!(
                                    "cannot rotate log file {}: {error}; writing on past max_bytes",
                                    self.path.display()
                                ));
                                self.buf.len()
                            }
                        }
                    }
                }
            };
            let (file, _) = self.file.as_mut().expect("current");
            file.write_all(&self.buf[start..end])?;
            let lines = count_lines(&self.buf[start..end]);
            self.status.written.fetch_add(lines, Ordering::Relaxed);
            start = end;
        }
        self.buf.clear();
        Ok(())
    }

    /// Makes `self.file` the file at the path now (another process may have
    /// rotated it, or someone removed it).
    fn current(&mut self) -> io::Result<()> {
        let on_disk = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(identity(&meta)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        if let (Some((_, ours)), Some(disk)) = (&self.file, on_disk) {
            if *ours == disk {
                return Ok(());
            }
        }
        self.file = None;
        let file = open_append(&self.path)?;
        let id = identity(&file.metadata()?);
        self.file = Some((file, id));
        Ok(())
    }

    /// With the lock held: `name.(keep-1)` -> `name.keep`, ..., `name` ->
    /// `name.1`, and a fresh `name`.
    fn rotate(&mut self) -> io::Result<()> {
        let ignore_missing = |result: io::Result<()>| match result {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
        if self.keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path))?;
        } else {
            // The rotated files run from 1 without a gap: shift those (a
            // gap someone made ends the run; files past `keep` from a
            // larger `keep` earlier are left alone).
            let mut top = 0;
            while top < self.keep && numbered(&self.path, top + 1).exists() {
                top += 1;
            }
            if top == self.keep {
                ignore_missing(std::fs::remove_file(numbered(&self.path, top)))?;
                top -= 1;
            }
            for n in (1..=top).rev() {
                ignore_missing(std::fs::rename(
                    numbered(&self.path, n),
                    numbered(&self.path, n + 1),
                ))?;
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        self.status.rotations.fetch_add(1, Ordering::Relaxed);
        self.rotate_retry_at = None;
        self.file = None;
        self.current()
    }

    /// Keeps what fits in the failure buffer; counts the rest as lost.
    fn shed(&mut self) {
        if self.buf.len() <= MAX_PENDING {
            return;
        }
        // Drop whole lines from the front: the oldest go.
        let excess = self.buf.len() - MAX_PENDING;
        let cut = match self.buf[excess..].iter().position(|&b| b == b'\n') {
            Some(i) => excess + i + 1,
            None => self.buf.len(),
        };
        let lost = count_lines(&self.buf[..cut]);
        self.buf.drain(..cut);
        self.lost_since += lost;
        self.status.lost.fetch_add(lost, Ordering::Relaxed);
    }

    fn failed(&mut self, error: &io::Error) {
        self.file = None;
        self.retry_at = Some(Instant::now() + crate::event::jittered(self.retry));
        self.retry = (self.retry * 2).min(MAX_RETRY);
        self.report(&format!(
            "cannot write log file {}: {error}; lines wait (up to 1 MiB, then are counted as lost) while it is retried",
            self.path.display()
        ));
    }

    /// Says a failure once (stderr, health check) until it is over.
    fn report(&self, message: &str) {
        let mut failing = self.status.failing.lock();
        if failing.is_none() {
            let _ = io::stderr().write_all(own_line("ERROR", message).as_bytes());
        }
        *failing = Some(message.to_owned());
    }

    fn recovered(&mut self) {
        self.retry_at = None;
        if self.rotate_retry_at.is_some() {
            return;
        }
        self.retry = FIRST_RETRY;
        let was = self.status.failing.lock().take();
        if was.is_some() {
            let lost = std::mem::take(&mut self.lost_since);
            let line = own_line(
                "WARNING",
                &format!(
                    "log file {} writable again; {lost} lines could not be written meanwhile",
                    self.path.display()
                ),
            );
            let _ = io::stderr().write_all(line.as_bytes());
            self.buf.extend_from_slice(line.as_bytes());
            if self.write_locked().is_err() {
                self.buf.clear();
            }
        }
    }
}

/// How many bytes of whole lines from the front of `lines` fit in `room`
/// (`None`: not even the first).
fn fit(lines: &[u8], room: usize) -> Option<usize> {
    if lines.len() <= room {
        return Some(lines.len());
    }
    let last = lines[..room].iter().rposition(|&b| b == b'\n')?;
    Some(last + 1)
}

fn line_end(lines: &[u8]) -> usize {
    lines
        .iter()
        .position(|&b| b == b'\n')
        .map_or(lines.len(), |i| i + 1)
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

impl Write for SharedFile {
    /// Takes one formatted event (whole lines); written in batches.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BATCH_BYTES {
            self.commit();
        }
        Ok(data.len())
    }

    /// Writes the batch (the logging thread calls it when it has no more
    /// lines waiting).
    fn flush(&mut self) -> io::Result<()> {
        self.commit();
        Ok(())
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        self.commit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(dir: &Path, name: &str) -> Vec<String> {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_batch_is_split_at_a_line_and_a_line_longer_than_the_limit_goes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = SharedFile::new(dir.path().join("t.log"), 10, 3).unwrap();
        file.write_all(b"aaaa\nbbbb\ncccc\n").unwrap();
        file.write_all(b"a line of more than ten bytes\nd\n")
            .unwrap();
        file.flush().unwrap();
        assert_eq!(lines(dir.path(), "t.log.3"), ["aaaa", "bbbb"]);
        assert_eq!(lines(dir.path(), "t.log.2"), ["cccc"]);
        assert_eq!(
            lines(dir.path(), "t.log.1"),
            ["a line of more than ten bytes"]
        );
        assert_eq!(lines(dir.path(), "t.log"), ["d"]);
        // keep = 3: the next rotation drops the oldest.
        file.write_all(b"eeeeeeeeee\n").unwrap();
        file.flush().unwrap();
        assert_eq!(lines(dir.path(), "t.log.3"), ["cccc"]);
        assert!(!dir.path().join("t.log.4").exists());
        assert_eq!(file.status().written.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn keep_0_starts_the_file_afresh_and_a_removed_file_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut file = SharedFile::new(path.clone(), 10, 0).unwrap();
        file.write_all(b"aaaaaaaa\nbbbbbbbb\n").unwrap();
        file.flush().unwrap();
        assert_eq!(lines(dir.path(), "t.log"), ["bbbbbbbb"]);
        std::fs::remove_file(&path).unwrap();
        file.write_all(b"c\n").unwrap();
        file.flush().unwrap();
        assert_eq!(lines(dir.path(), "t.log"), ["c"]);
        assert!(file.status().failing.lock().is_none());
    }
}
