//! Reloaders on real files with real inotify; every wait is on a channel
//! the reload function feeds.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serve_common::reloading::{InotifyReloader, PollingReloader, Reloader, ReloaderKind};
use serve_common_tests::logs;

const LONG: Duration = Duration::from_secs(10);

/// A reload function that sends the content it read.
fn reporting() -> (
    impl FnMut(&Path) -> std::io::Result<()> + Send + 'static,
    Receiver<String>,
) {
    let (tx, rx) = mpsc::channel();
    let reload = move |path: &Path| {
        let _ = tx.send(std::fs::read_to_string(path)?);
        Ok(())
    };
    (reload, rx)
}

fn file_with(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("watched.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn atomic_write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn the_default_reloader_uses_inotify_and_sees_an_edit() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_with(dir.path(), "v = 1\n");
    let (reload, rx) = reporting();
    let reloader = Reloader::new(&path, reload).unwrap();
    assert_eq!(reloader.kind(), ReloaderKind::Inotify);
    std::fs::write(&path, "v = 2\n").unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "v = 2\n");
}

#[test]
fn a_touch_does_not_fire_and_the_next_real_edit_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_with(dir.path(), "same\n");
    let (reload, rx) = reporting();
    let _reloader = InotifyReloader::new(&path, reload).unwrap();
    // A touch: new mtime, same bytes; then a save of the same bytes.
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(file);
    // Saved the way editors save (a rename): no half-written state to see.
    atomic_write(&path, "same\n");
    atomic_write(&path, "edited\n");
    assert_eq!(
        rx.recv_timeout(LONG).unwrap(),
        "edited\n",
        "the first call is the edit's"
    );
    atomic_write(&path, "edited again\n");
    assert_eq!(
        rx.recv_timeout(LONG).unwrap(),
        "edited again\n",
        "and nothing came in between"
    );
}

#[test]
fn an_editors_atomic_rename_is_seen_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_with(dir.path(), "n = 0\n");
    let (reload, rx) = reporting();
    let _reloader = InotifyReloader::new(&path, reload).unwrap();
    for n in 1..=3 {
        atomic_write(&path, &format!("n = {n}\n"));
        assert_eq!(rx.recv_timeout(LONG).unwrap(), format!("n = {n}\n"));
    }
}

/// The layout Kubernetes gives a ConfigMap volume: `config.toml ->
/// ..data/config.toml`, `..data -> ..<timestamp>`, and an update that
/// renames a new `..data` link over the old one.
#[test]
fn a_kubernetes_style_symlink_swap_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let first = root.join("..2026_11_28_00_00_00.1");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(first.join("config.toml"), "version = 1\n").unwrap();
    std::os::unix::fs::symlink(first.file_name().unwrap(), root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", root.join("config.toml")).unwrap();
    let path = root.join("config.toml");
    let (reload, rx) = reporting();
    let _reloader = InotifyReloader::new(&path, reload).unwrap();

    for version in 2..=3 {
        let next = root.join(format!("..2026_11_28_00_00_0{version}.1"));
        std::fs::create_dir(&next).unwrap();
        std::fs::write(next.join("config.toml"), format!("version = {version}\n")).unwrap();
        std::os::unix::fs::symlink(next.file_name().unwrap(), root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert_eq!(
            rx.recv_timeout(LONG).unwrap(),
            format!("version = {version}\n")
        );
    }
}

#[test]
fn a_symlink_to_another_directory_follows_edits_of_the_target() {
    let (link_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let target = file_with(target_dir.path(), "where = \"target\"\n");
    let link = link_dir.path().join("config.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (reload, rx) = reporting();
    let _reloader = InotifyReloader::new(&link, reload).unwrap();
    std::fs::write(&target, "where = \"edited target\"\n").unwrap();
    assert_eq!(
        rx.recv_timeout(LONG).unwrap(),
        "where = \"edited target\"\n"
    );
}

#[test]
fn a_deleted_file_does_not_fire_and_its_return_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_with(dir.path(), "a = 1\n");
    let (reload, rx) = reporting();
    let _reloader = InotifyReloader::new(&path, reload).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "a = 2\n").unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "a = 2\n");
}

#[test]
fn a_failing_or_panicking_reload_function_is_logged_and_watching_goes_on() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let path = file_with(dir.path(), "0\n");
    let (tx, rx) = mpsc::channel();
    let _reloader = InotifyReloader::new(&path, move |path: &Path| -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        tx.send(text.clone()).unwrap();
        match text.trim() {
            "panic" => panic!("reload panicked on purpose"),
            "fail" => Err("reload failed on purpose".to_owned()),
            _ => Ok(()),
        }
    })
    .unwrap();
    for text in ["panic\n", "fail\n", "fine\n"] {
        std::fs::write(&path, text).unwrap();
        assert_eq!(rx.recv_timeout(LONG).unwrap(), text);
    }
    assert!(!logs.lines_with("reload panicked on purpose").is_empty());
    assert!(!logs.lines_with("reload failed on purpose").is_empty());
}

#[test]
fn the_polling_reloader_sees_edits() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_with(dir.path(), "p = 1\n");
    let (reload, rx) = reporting();
    let _reloader = PollingReloader::new(&path, Duration::from_millis(20), reload).unwrap();
    std::fs::write(&path, "p = 2\n").unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "p = 2\n");
    atomic_write(&path, "p = 3\n");
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "p = 3\n");
}

#[test]
fn without_a_watchable_directory_the_default_falls_back_to_polling() {
    let dir = tempfile::tempdir().unwrap();
    let later = dir.path().join("not-yet");
    let path = later.join("config.toml");
    let (reload, rx) = reporting();
    let reloader = Reloader::new(&path, reload).unwrap();
    assert_eq!(reloader.kind(), ReloaderKind::Polling);
    std::fs::create_dir(&later).unwrap();
    std::fs::write(&path, "late = true\n").unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "late = true\n");
}

#[test]
fn dropping_the_reloader_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_with(dir.path(), "x\n");
    let (reload, rx) = reporting();
    let reloader = InotifyReloader::new(&path, reload).unwrap();
    drop(reloader);
    // The thread exits and drops the function, which closes the channel.
    assert_eq!(
        rx.recv_timeout(LONG),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
}

/// A reload that fails for a reason other than the content is tried again
/// at the next poll, though the file did not change again.
#[test]
fn a_failed_reload_is_tried_again_without_another_edit() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_with(dir.path(), "v = 1\n");
    let (tx, rx) = mpsc::channel();
    let mut attempts = 0;
    let _reloader = PollingReloader::new(&path, Duration::from_millis(20), move |p: &Path| {
        attempts += 1;
        let _ = tx.send((attempts, std::fs::read_to_string(p).unwrap_or_default()));
        if attempts == 1 {
            Err("the database holding the secrets is not up yet")
        } else {
            Ok(())
        }
    })
    .unwrap();
    atomic_write(&path, "v = 2\n");
    assert_eq!(rx.recv_timeout(LONG).unwrap(), (1, "v = 2\n".to_owned()));
    assert_eq!(rx.recv_timeout(LONG).unwrap(), (2, "v = 2\n".to_owned()));
    // Succeeded: quiet until the next change.
    atomic_write(&path, "v = 3\n");
    assert_eq!(rx.recv_timeout(LONG).unwrap(), (3, "v = 3\n".to_owned()));
}
