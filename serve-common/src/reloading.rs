//! File reloading: call a function when a file's content changes. The
//! Python original's `reloading` module.
//!
//! ```no_run
//! use serve_common::reloading::Reloader;
//!
//! let reloader = Reloader::new("config.toml", |path: &std::path::Path| {
//!     let text = std::fs::read_to_string(path)?;
//!     println!("new content: {text}");
//!     Ok::<(), std::io::Error>(())
//! })?;
//! // ... the watcher stops when `reloader` is dropped.
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! - [`PollingReloader`] checks the file's metadata every interval (1 s by
//!   default, as in the original).
//! - [`InotifyReloader`] (feature `inotify`, on by default) watches the
//!   file's directory, so it sees editors' atomic renames and
//!   Kubernetes-style `..data` symlink swaps; it waits for a burst of
//!   events to go quiet (debounce, 10 ms) and keeps a slow safety poll
//!   (10 s) for filesystems that drop events (bind mounts, overlayfs, NFS).
//! - [`Reloader::new`] picks inotify and falls back to polling.
//!
//! All of them compare the content: a touch, or a save of the same bytes,
//! does not call the function. A file that disappears (or cannot be read)
//! calls it once, so it can report that (reading the file fails there);
//! the file is compared again when it comes back. A function that returns
//! `Err` is logged and called again at the next event or poll, even if
//! the file did not change (return `Ok` after logging when trying again
//! cannot help, as for a file whose content is wrong); one that panics is
//! logged. The watcher goes on either way. The function runs on the
//! watcher's thread.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::HandlerOutcome;

type ReloadFn = Box<dyn FnMut(&Path) -> Result<(), String> + Send>;

/// The file, its last seen content, and the function to call.
struct Watched {
    path: PathBuf,
    last: Option<(u64, u64)>,
    /// The last call returned `Err`: call again even if nothing changed.
    failed: bool,
    /// The error of the last failing call, if the failures go on.
    failed_with: Option<String>,
    reload: ReloadFn,
}

impl Watched {
    fn new<F, R>(path: &Path, mut reload: F) -> Self
    where
        F: FnMut(&Path) -> R + Send + 'static,
        R: HandlerOutcome,
    {
        let mut watched = Self {
            path: path.to_owned(),
            last: None,
            failed: false,
            failed_with: None,
            reload: Box::new(move |path: &Path| reload(path).into_outcome()),
        };
        watched.last = watched.fingerprint();
        watched
    }

    fn fingerprint(&self) -> Option<(u64, u64)> {
        let bytes = std::fs::read(&self.path).ok()?;
        let mut hasher = DefaultHasher::new();
        hasher.write(&bytes);
        Some((bytes.len() as u64, hasher.finish()))
    }

    /// Calls the function if the content differs from the last seen (a
    /// file gone or unreadable counts as a change), or if the last call
    /// failed.
    fn check(&mut self) {
        let now = self.fingerprint();
        if now == self.last && !self.failed {
            return;
        }
        self.last = now;
        let path = self.path.clone();
        self.failed = false;
        match catch_unwind(AssertUnwindSafe(|| (self.reload)(&path))) {
            Ok(Ok(())) => {
                self.failed_with = None;
                tracing::debug!(file = %path.display(), "reloaded")
            }
            Ok(Err(error)) => {
                // Tried again at the next event or poll, changed or not;
                // the same failure again is not worth another ERROR line.
                if self.failed_with.as_deref() == Some(error.as_str()) {
                    tracing::debug!(file = %path.display(), %error, "reload failed again; will try again");
                } else {
                    tracing::error!(file = %path.display(), %error, "reload failed; will try again");
                }
                self.failed = true;
                self.failed_with = Some(error);
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(non-string panic payload)");
                tracing::error!(file = %path.display(), panic = message, "reload function panicked");
            }
        }
    }
}

enum Msg {
    #[cfg_attr(not(feature = "inotify"), allow(dead_code))]
    Fs(Box<dyn Fn(&Path) -> bool + Send>),
    Stop,
}

/// Stops the watcher thread when dropped.
struct StopOnDrop(mpsc::Sender<Msg>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Msg::Stop);
    }
}

/// Checks the file's metadata (modification time, size, inode) every
/// interval and calls the function when the content changed.
pub struct PollingReloader {
    _stop: StopOnDrop,
}

impl PollingReloader {
    /// The original's default interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    /// Polls `path` every `interval`.
    pub fn new<F, R>(path: impl AsRef<Path>, interval: Duration, reload: F) -> io::Result<Self>
    where
        F: FnMut(&Path) -> R + Send + 'static,
        R: HandlerOutcome,
    {
        // Metadata first, then content: an edit in between is caught by the
        // next poll and compared against the content.
        let mut meta = stat(path.as_ref());
        let mut watched = Watched::new(path.as_ref(), reload);
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("serve-common-poll".into())
            .spawn(move || loop {
                match rx.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(Msg::Fs(_)) => continue,
                    Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let now = stat(&watched.path);
                if now != meta || watched.failed {
                    meta = now;
                    watched.check();
                }
            })?;
        Ok(Self {
            _stop: StopOnDrop(tx),
        })
    }
}

fn stat(path: &Path) -> Option<(i64, i64, u64, u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.size(), m.ino(), m.dev()))
}

/// Options of an [`InotifyReloader`].
#[derive(Clone, Copy, Debug)]
pub struct InotifyOptions {
    /// How long events must be quiet before the file is read (default 10 ms).
    pub debounce: Duration,
    /// How often the file is checked even without events (default 10 s).
    pub safety_poll: Duration,
}

impl Default for InotifyOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(10),
            safety_poll: Duration::from_secs(10),
        }
    }
}

/// Watches the file's directory (and, for a symlink, its target's) with
/// inotify through the `notify` crate.
///
/// Needs the `inotify` feature.
#[cfg(feature = "inotify")]
pub struct InotifyReloader {
    _stop: StopOnDrop,
}

#[cfg(feature = "inotify")]
impl InotifyReloader {
    /// Watches `path` with the default options.
    pub fn new<F, R>(path: impl AsRef<Path>, reload: F) -> io::Result<Self>
    where
        F: FnMut(&Path) -> R + Send + 'static,
        R: HandlerOutcome,
    {
        Self::with_options(path, InotifyOptions::default(), reload)
    }

    /// Watches `path`.
    pub fn with_options<F, R>(
        path: impl AsRef<Path>,
        options: InotifyOptions,
        reload: F,
    ) -> io::Result<Self>
    where
        F: FnMut(&Path) -> R + Send + 'static,
        R: HandlerOutcome,
    {
        use notify::Watcher;

        let path = path.as_ref();
        let (tx, rx) = mpsc::channel();
        let fs_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let event = match res {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(%error, "file watcher error; checking the file");
                    notify::Event::new(notify::EventKind::Any)
                }
            };
            if matches!(event.kind, notify::EventKind::Access(kind)
                if kind != notify::event::AccessKind::Close(notify::event::AccessMode::Write))
            {
                return;
            }
            let paths = event.paths;
            let _ = fs_tx.send(Msg::Fs(Box::new(move |name_of_interest: &Path| {
                paths.is_empty() || paths.iter().any(|p| touches(p, name_of_interest))
            })));
        })
        .map_err(notify_to_io)?;
        let mut dirs = Vec::new();
        for dir in watch_dirs(path) {
            watcher
                .watch(&dir, notify::RecursiveMode::NonRecursive)
                .map_err(notify_to_io)?;
            dirs.push(dir);
        }
        // The baseline content after the watches exist: an edit in between
        // is either in the baseline or seen as an event.
        let watched = Watched::new(path, reload);
        thread::Builder::new()
            .name("serve-common-watch".into())
            .spawn(move || run_inotify(watched, watcher, dirs, rx, options))?;
        Ok(Self {
            _stop: StopOnDrop(tx),
        })
    }
}

/// Whether an event on `changed` may concern the watched file: the same
/// name (or its symlink target's), or a `..`-prefixed entry (Kubernetes'
/// `..data` swap).
#[cfg(feature = "inotify")]
fn touches(changed: &Path, file: &Path) -> bool {
    let name = changed.file_name();
    name == file.file_name()
        || std::fs::canonicalize(file)
            .ok()
            .as_deref()
            .and_then(Path::file_name)
            == name
        || name.is_some_and(|n| n.to_string_lossy().starts_with(".."))
        || changed == file
}

#[cfg(feature = "inotify")]
fn watch_dirs(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(path)];
    if let Ok(target) = std::fs::canonicalize(path) {
        let target_dir = parent(&target);
        if std::fs::canonicalize(&dirs[0]).ok() != Some(target_dir.clone()) {
            dirs.push(target_dir);
        }
    }
    dirs
}

#[cfg(feature = "inotify")]
fn notify_to_io(e: notify::Error) -> io::Error {
    match e.kind {
        notify::ErrorKind::Io(io) => io,
        _ => io::Error::other(e.to_string()),
    }
}

#[cfg(feature = "inotify")]
fn run_inotify(
    mut watched: Watched,
    mut watcher: notify::RecommendedWatcher,
    mut dirs: Vec<PathBuf>,
    rx: mpsc::Receiver<Msg>,
    options: InotifyOptions,
) {
    use notify::Watcher;
    use std::time::Instant;

    let mut next_poll = Instant::now() + options.safety_poll;
    loop {
        let wait = next_poll.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                next_poll = Instant::now() + options.safety_poll;
                watched.check();
                continue;
            }
            Ok(Msg::Fs(concerns)) => {
                if !concerns(&watched.path) {
                    continue;
                }
            }
        }
        // Debounce: wait until events stay quiet, but not forever.
        let give_up = Instant::now() + options.debounce * 20;
        let mut quiet_at = Instant::now() + options.debounce;
        loop {
            let now = Instant::now();
            if now >= quiet_at || now >= give_up {
                break;
            }
            match rx.recv_timeout(quiet_at.min(give_up) - now) {
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(Msg::Fs(_)) => quiet_at = Instant::now() + options.debounce,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        watched.check();
        // Follow a symlink whose target moved to another directory.
        let wanted = watch_dirs(&watched.path);
        for dir in &wanted {
            if !dirs.contains(dir) {
                match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => dirs.push(dir.clone()),
                    Err(error) => tracing::debug!(dir = %dir.display(), %error, "cannot watch"),
                }
            }
        }
        dirs.retain(|dir| {
            let keep = wanted.contains(dir);
            if !keep {
                let _ = watcher.unwatch(dir);
            }
            keep
        });
    }
}

/// Which mechanism a [`Reloader`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloaderKind {
    /// inotify events, with a safety poll.
    Inotify,
    /// Metadata polling.
    Polling,
}

/// The default reloader: inotify where it works, polling otherwise.
pub struct Reloader {
    kind: ReloaderKind,
    _inner: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("kind", &self.kind)
            .finish()
    }
}

impl Reloader {
    /// Watches `path` with inotify, or polls it every second if inotify
    /// cannot watch it (the fallback is logged).
    pub fn new<F, R>(path: impl AsRef<Path>, reload: F) -> io::Result<Self>
    where
        F: FnMut(&Path) -> R + Send + 'static,
        R: HandlerOutcome,
    {
        Self::new_default(path.as_ref(), reload)
    }

    #[cfg(feature = "inotify")]
    fn new_default<F, R>(path: &Path, reload: F) -> io::Result<Self>
    where
        F: FnMut(&Path) -> R + Send + 'static,
        R: HandlerOutcome,
    {
        // The function is needed twice if inotify fails: share it.
        let shared = std::sync::Arc::new(parking_lot::Mutex::new(reload));
        let first = shared.clone();
        match InotifyReloader::new(path, move |p: &Path| (*first.lock())(p)) {
            Ok(inner) => Ok(Self {
                kind: ReloaderKind::Inotify,
                _inner: Box::new(inner),
            }),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "inotify unavailable; polling instead");
                let poll = PollingReloader::new(
                    path,
                    PollingReloader::DEFAULT_INTERVAL,
                    move |p: &Path| (*shared.lock())(p),
                )?;
                Ok(Self {
                    kind: ReloaderKind::Polling,
                    _inner: Box::new(poll),
                })
            }
        }
    }

    #[cfg(not(feature = "inotify"))]
    fn new_default<F, R>(path: &Path, reload: F) -> io::Result<Self>
    where
        F: FnMut(&Path) -> R + Send + 'static,
        R: HandlerOutcome,
    {
        Self::polling(path, PollingReloader::DEFAULT_INTERVAL, reload)
    }

    /// A polling reloader behind the common type.
    pub fn polling<F, R>(path: impl AsRef<Path>, interval: Duration, reload: F) -> io::Result<Self>
    where
        F: FnMut(&Path) -> R + Send + 'static,
        R: HandlerOutcome,
    {
        Ok(Self {
            kind: ReloaderKind::Polling,
            _inner: Box::new(PollingReloader::new(path, interval, reload)?),
        })
    }

    /// Which mechanism this reloader uses.
    pub fn kind(&self) -> ReloaderKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::Watched;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    /// The content comparison itself, without a watcher's timing: a touch
    /// or a save of the same bytes calls nothing, an edit calls once.
    #[test]
    fn only_a_change_of_content_calls_the_function() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let mut watched = Watched::new(&path, move |p: &Path| {
            seen.lock()
                .unwrap()
                .push(std::fs::read_to_string(p).unwrap_or_else(|_| "(gone)".to_owned()));
        });
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        drop(file);
        watched.check();
        std::fs::write(&path, "a = 1\n").unwrap();
        watched.check();
        assert!(
            calls.lock().unwrap().is_empty(),
            "a touch or same bytes call nothing"
        );
        std::fs::write(&path, "a = 2\n").unwrap();
        watched.check();
        watched.check();
        std::fs::remove_file(&path).unwrap();
        watched.check();
        watched.check();
        std::fs::write(&path, "a = 2\n").unwrap();
        watched.check();
        std::fs::write(&path, "a = 3\n").unwrap();
        watched.check();
        assert_eq!(
            *calls.lock().unwrap(),
            ["a = 2\n", "(gone)", "a = 2\n", "a = 3\n"],
            "a deletion calls once, its return again"
        );
    }

    #[test]
    fn a_failed_call_is_made_again_without_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let calls = Arc::new(Mutex::new(0));
        let seen = calls.clone();
        let mut watched = Watched::new(&path, move |_: &Path| {
            let mut calls = seen.lock().unwrap();
            *calls += 1;
            if *calls < 3 {
                Err("not yet")
            } else {
                Ok(())
            }
        });
        std::fs::write(&path, "a = 2\n").unwrap();
        for _ in 0..5 {
            watched.check();
        }
        assert_eq!(
            *calls.lock().unwrap(),
            3,
            "retried until it worked, then quiet"
        );
    }
}
