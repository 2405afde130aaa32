//! Config sets across real processes that misbehave or collide: a hostile
//! deep path, two processes with the same pid, and sets that arrive out of
//! order. Every wait is on a line a process printed.
#![forbid(unsafe_code)]

use serve_common_tests::ipc_support::{Members, events_members};

const HELPER: &str = env!("CARGO_BIN_EXE_ipc_helper");

fn server() -> &'static str {
    serve_common_tests::ipc_support::shared_server(HELPER)
}

fn members(wraps: &[&[&str]], config: &str) -> Members {
    events_members(HELPER, server(), wraps, config, true)
}

#[test]
fn a_set_with_a_hostile_path_is_refused_everywhere_and_nobody_falls() {
    let plain: &[&str] = &[];
    let mut service = members(&[plain, plain, plain], "");
    // 10,000 keys, about 20 KB: within every size limit.
    service.processes[0].send("notify-deep-set 10000");
    service.processes[0].send("notify test.after 1");
    for process in &mut service.processes[1..] {
        process.expect("handled test.after 1");
        let (_, line) = process.expect_stderr(0, &["ignoring a config set from another process"]);
        assert!(line.contains("longer than the 1024"), "{line}");
        process.send("ping 1");
        process.expect("pong 1");
    }
}

#[test]
fn processes_with_the_same_pid_converge_on_concurrent_sets() {
    if !nix::unistd::getuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root"
        );
        eprintln!("skipped: separate PID namespaces need root (unshare --pid)");
        return;
    }
    // Each in its own PID namespace: both are pid 1 there.
    let isolated: &[&str] = &["unshare", "--pid", "--fork", "--kill-child"];
    let plain: &[&str] = &[];
    let mut service = members(&[isolated, isolated, plain], "");
    for process in &mut service.processes[..2] {
        process.send("get-pid");
        assert_eq!(process.expect("pid "), "pid 1");
    }
    // A set from a process whose clock is ahead: both clocks jump to it,
    // so their next sets carry the same clock and only the origin tells
    // them apart.
    service.processes[2].send("notify-set warm.up 1 60");
    for process in &mut service.processes[..2] {
        process.expect("handled config:warm.up 1");
    }
    service.processes[0].send("set race.v 1");
    service.processes[1].send("set race.v 2");
    // Barriers: each process's later event follows its set everywhere.
    service.processes[0].send("notify test.done 0");
    service.processes[1].send("notify test.done 1");
    let mut values = Vec::new();
    for process in &mut service.processes {
        process.expect_line("handled test.done 0");
        process.expect_line("handled test.done 1");
        process.send("ping 1");
        process.expect("pong 1");
        process.send("get race.v");
        values.push(process.expect("value "));
    }
    assert!(
        values.iter().all(|v| *v == values[0]),
        "the processes disagree: {values:?}"
    );
}
