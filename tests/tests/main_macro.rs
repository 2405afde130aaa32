//! `#[serve_common::main]` on a real program: config, logging, IPC and
//! the event bus set up before the body, torn down after.
#![forbid(unsafe_code)]

use std::process::Command;

const SERVICE: &str = env!("CARGO_BIN_EXE_main_service");

fn run(dir: &std::path::Path, config: &str, args: &[&str]) -> std::process::Output {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(SERVICE)
        .args(args)
        .current_dir(dir)
        .env("SERVE_COMMON_CONFIG", &path)
        .env_remove(serve_common::ipc::ADDR_ENV)
        .output()
        .unwrap()
}

fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {stdout}"))
}

/// Whether anything still listens at an IPC address.
fn listening(address: &str) -> bool {
    serve_common_tests::ipc_support::raw_connect(address).is_ok()
}

#[test]
fn the_body_runs_with_everything_set_up_and_torn_down_after() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        dir.path(),
        "greeting = \"hi\"\n[logging]\nfile = \"svc.log\"\nlogs_dir = \"logs\"\n",
        &[],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(line(&stdout, "ipc "), "true");
    assert_eq!(line(&stdout, "greeting "), "hi");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("] [INFO    ] [") && l.ends_with("inside main")),
        "{stderr}"
    );
    let file = std::fs::read_to_string(dir.path().join("logs/svc.log")).unwrap();
    assert!(file.contains("inside main"), "flushed on exit: {file}");
    // Shut down by the macro, not only by the kernel when the parent died.
    assert!(file.contains("IPC server stopped"), "{file}");
    let address = line(&stdout, "address ");
    assert!(
        !listening(address),
        "the IPC server it started was shut down"
    );
}

#[test]
fn a_panic_in_main_still_tears_down() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), "[logging]\nfile = \"svc.log\"\n", &["panic"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("asked to panic"), "{stderr}");
    let file = std::fs::read_to_string(dir.path().join("logs/svc.log")).unwrap();
    assert!(file.contains("the main body panicked"), "{file}");
    // Stopped by the teardown, not killed by the kernel with its parent.
    assert!(file.contains("IPC server stopped"), "{file}");
    assert!(!listening(line(&stdout, "address ")));
}

#[test]
fn an_error_from_main_still_tears_down() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), "[logging]\nfile = \"svc.log\"\n", &["fail"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("asked to fail"), "{stderr}");
    let file = std::fs::read_to_string(dir.path().join("logs/svc.log")).unwrap();
    assert!(file.contains("IPC server stopped"), "{file}");
    assert!(!listening(line(&stdout, "address ")));
}

#[test]
fn a_bad_config_stops_the_program_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), "greeting = \n", &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("error: cannot load the config") && stderr.contains("config.toml"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "the body did not run");
}

#[test]
fn a_config_section_of_the_wrong_type_stops_the_program_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), "[logging]\nlevel = 5\n", &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: bad config")
            && stderr.contains("`logging.level`")
            && stderr.contains("config.toml"),
        "names the key and where it came from: {stderr}"
    );
    assert!(output.stdout.is_empty(), "the body did not run");
}
