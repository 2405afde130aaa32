//! The example service as a whole: worker processes sharing a level
//! change, a killed worker replaced, a config edit taking effect without a
//! restart, and a graceful SIGTERM with a request in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use nix::sys::signal::Signal;
use serde_json::Value;
use serve_common_tests::http_support::{
    Service, children_of, get, post_json, read_response, send_request,
};
use serve_common_tests::process_gone;

fn start(config: &str) -> Service {
    Service::start(env!("CARGO_BIN_EXE_example_service"), config)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Asks `/manage/health` until every pid of `pids` has answered with
/// `level` (the kernel spreads connections over the workers; polling is
/// the only way to reach a given one). Returns the levels seen per pid.
fn poll_until_all_answer(
    service: &Service,
    pids: &BTreeSet<u32>,
    level: &str,
) -> BTreeMap<u32, String> {
    let mut latest = BTreeMap::new();
    for _ in 0..2_000 {
        let health = json(&get(service.address, "/manage/health").body);
        let pid = health["pid"].as_u64().unwrap() as u32;
        assert!(
            pids.contains(&pid),
            "answered by {pid}, not a worker of {pids:?}"
        );
        latest.insert(pid, health["level"].as_str().unwrap().to_owned());
        if latest.len() == pids.len() && latest.values().all(|l| l == level) {
            return latest;
        }
    }
    panic!("not every worker answered with {level}: {latest:?}");
}

/// POSTs `body` to `/manage/logging/level` (a 200) and waits until every
/// worker of `pids` answers with `level`.
fn post_level_everywhere(service: &Service, pids: &BTreeSet<u32>, body: &str, level: &str) {
    let response = post_json(service.address, "/manage/logging/level", body);
    assert_eq!(response.status, 200, "{}", response.body);
    poll_until_all_answer(service, pids, level);
}

#[test]
fn a_level_change_answered_by_one_worker_reaches_every_worker() {
    let service = start("[server]\nprocesses = 2\nworkers = 1\n");
    let pids = service.worker_pids(2);
    poll_until_all_answer(&service, &pids, "INFO");

    post_level_everywhere(&service, &pids, r#"{"level": "WARNING"}"#, "WARNING");
    // The supervisor follows too (it is in the IPC group).
    let supervisor = format!("[{}] config changed path=logging.level", service.pid());
    service.wait_log(&supervisor);
}

#[test]
fn a_killed_worker_is_replaced_and_inherits_the_runtime_level() {
    let service = start("[server]\nprocesses = 2\nworkers = 1\n");
    let pids = service.worker_pids(2);
    post_level_everywhere(&service, &pids, r#"{"level": "debug"}"#, "DEBUG");

    let victim = *pids.first().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let restarted = service.wait_log("started (pid ");
    let new_pid: u32 = restarted
        .split("started (pid ")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {restarted:?}"));
    assert!(
        service
            .log()
            .iter()
            .any(|l| l.contains(&format!("(pid {victim}) exited")))
    );

    let mut now: BTreeSet<u32> = pids.clone();
    now.remove(&victim);
    now.insert(new_pid);
    // The new worker serves, at the level set before it existed.
    poll_until_all_answer(&service, &now, "DEBUG");
    assert!(process_gone(victim));
}

#[test]
fn editing_the_config_file_changes_the_level_without_a_restart() {
    let service = start("[logging]\nlevel = \"INFO\"\n");
    assert_eq!(
        json(&get(service.address, "/manage/logging/level").body)["level"],
        "INFO"
    );
    let before = service.log().len();
    std::fs::write(
        service.config_path(),
        "[logging]\nlevel = \"ERROR\"\n[server]\nbind = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    service.wait_log_after(before, "config changed path=logging.level");
    let level = get(service.address, "/manage/logging/level");
    assert_eq!(json(&level.body)["level"], "ERROR");
    assert_eq!(
        json(&get(service.address, "/manage/health").body)["pid"],
        service.pid()
    );

    // A bad edit keeps the old config (and says so).
    std::fs::write(service.config_path(), "[logging\nlevel = ").unwrap();
    service.wait_log_after(before, "config reload failed");
    assert_eq!(
        json(&get(service.address, "/manage/logging/level").body)["level"],
        "ERROR"
    );
}

/// With worker processes, every process reads a bad edit, and the
/// service says so once: the supervisor's ERROR line.
#[test]
fn a_bad_edit_with_worker_processes_is_one_error_line() {
    let config = "[server]\nprocesses = 2\nworkers = 1\n[greeting]\ntemplate = \"a {name}\"\n";
    let service = start(config);
    let pids = service.worker_pids(2);
    let before = service.log().len();
    std::fs::write(service.config_path(), "[server\nprocesses = ").unwrap();
    service.wait_log_after(before, "config reload failed");
    // A good edit after it: once each process has read it, each has read
    // (or skipped) the bad one before.
    std::fs::write(
        service.config_path(),
        config.replace("a {name}", "b {name}"),
    )
    .unwrap();
    for pid in pids.iter().copied().chain([service.pid()]) {
        service.wait_log_after(before, &format!("[{pid}] config reloaded"));
    }
    let errors: Vec<String> = service.log()[before..]
        .iter()
        .filter(|line| line.contains("config reload failed"))
        .cloned()
        .collect();
    assert_eq!(errors.len(), 1, "one line for the service: {errors:?}");
    assert!(
        errors[0].contains("[ERROR") && errors[0].contains(&format!("[{}]", service.pid())),
        "the supervisor's, at ERROR: {errors:?}"
    );
}

/// SIGTERM while a request is half sent: the request still completes, then
/// every process of the service (supervisor, workers, IPC server) exits, 0.
#[test]
fn sigterm_lets_the_request_in_flight_finish_then_everything_exits_zero() {
    let mut service = start("[server]\nprocesses = 2\nworkers = 1\n");
    let workers = service.worker_pids(2);
    let family: Vec<u32> = children_of(service.pid());
    assert_eq!(
        family.len(),
        3,
        "two workers and the IPC server: {family:?}"
    );

    // Headers now, the body later: the request is in a worker's hands.
    let body = r#"{"level": "ERROR"}"#;
    let mut stream = send_request(
        service.address,
        "POST",
        "/manage/logging/level",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", &body.len().to_string()),
            ("X-Request-Id", "in-flight"),
        ],
        None,
    );
    // `[<request id> <trace>] hit ...`
    let hit = service.wait_log("[in-flight ");
    assert!(hit.contains("] hit /manage/logging/level client="), "{hit}");

    service.signal(Signal::SIGTERM);
    for pid in &workers {
        service.wait_log(&format!("[{pid}] SIGTERM received"));
    }
    stream.write_all(body.as_bytes()).unwrap();
    let response = read_response(stream);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(json(&response.body)["level"], "ERROR");

    let status = service.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}; log:\n{}",
        service.log().join("\n")
    );
    for pid in family {
        assert!(process_gone(pid), "process {pid} of the service is left");
    }
    let log = service.log().join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_single_process_service_stops_on_sigint_with_exit_zero() {
    let mut service = start("");
    assert_eq!(get(service.address, "/manage/version").status, 200);
    let family = children_of(service.pid());
    service.signal(Signal::SIGINT);
    let status = service.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}");
    service.wait_log("SIGINT received");
    for pid in family {
        assert!(process_gone(pid), "process {pid} is left");
    }
}

/// The pid of the service's IPC server: the supervisor's child started
/// with the server marker.
fn ipc_server_of(supervisor: u32) -> u32 {
    children_of(supervisor)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == b"SERVCOM_IPC_SERVER=1"))
        })
        .expect("the supervisor's IPC server")
}

/// The headline fault: `kill -9` of the IPC server of a 2-worker service
/// used to split it for good (a level POSTed to one worker never reached
/// the other, and the dead server stayed a zombie).
#[test]
fn a_killed_ipc_server_is_restarted_and_every_process_rejoins() {
    let mut service = start("[server]\nprocesses = 2\nworkers = 1\n");
    let pids = service.worker_pids(2);
    let server = ipc_server_of(service.pid());
    let before = service.log().len();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server as i32), Signal::SIGKILL).unwrap();
    service.wait_log_after(before, &format!("IPC server (pid {server}) exited"));
    service.wait_log_after(before, "IPC server restarted (pid ");
    for pid in pids.iter().chain([&service.pid()]) {
        service.wait_log_after(before, &format!("[{pid}] rejoined the IPC group"));
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{server}")).exists(),
        "the dead server was reaped"
    );
    post_level_everywhere(&service, &pids, r#"{"level": "WARNING"}"#, "WARNING");
    let health = get(service.address, "/manage/health");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(
        json(&health.body)["checks"]["ipc"]["ok"],
        true,
        "{}",
        health.body
    );

    let restarted = ipc_server_of(service.pid());
    service.signal(Signal::SIGTERM);
    let status = service.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", service.log().join("\n"));
    assert!(process_gone(restarted), "the restarted server stopped too");
}

/// With worker processes, an event runs the application's handlers once
/// per worker: the supervisor serves no requests and runs none of them.
#[test]
fn the_supervisor_runs_no_application_handler() {
    let service = start("[server]\nprocesses = 2\nworkers = 1\n");
    let workers = service.worker_pids(2);
    let supervisor = service.pid();
    let before = service.log().len();
    std::fs::write(
        service.config_path(),
        "[server]\nbind = \"127.0.0.1:0\"\nprocesses = 2\nworkers = 1\n[greeting]\ntemplate = \"hey {name}\"\n",
    )
    .unwrap();
    for pid in &workers {
        service.wait_log_after(before, &format!("[{pid}] greeting config changed"));
    }
    // The supervisor reloaded the file too, and follows a level change (its
    // own handlers run): once it logs that, the greeting event before it
    // has been dispatched there.
    service.wait_log_after(
        before,
        &format!("[{supervisor}] config changed path=greeting.template"),
    );
    let changed = post_json(
        service.address,
        "/manage/logging/level",
        r#"{"level": "DEBUG"}"#,
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    service.wait_log_after(
        before,
        &format!("[{supervisor}] config changed path=logging.level"),
    );
    let log = service.log();
    let runs = |pid: u32| {
        log[before..]
            .iter()
            .filter(|l| l.contains(&format!("[{pid}] greeting config changed")))
            .count()
    };
    for pid in &workers {
        assert_eq!(runs(*pid), 1, "worker {pid}");
    }
    assert_eq!(runs(supervisor), 0, "{}", log[before..].join("\n"));
}

/// A level POSTed at run time, then an edit of `logging.level` in the
/// file: the edit is newer, so every process takes it (and says so); an
/// edit of another key leaves a runtime level alone; `{"level": null}`
/// drops it; a level of the wrong type in the file is refused.
#[test]
fn the_newest_intent_wins_between_a_posted_level_and_the_file() {
    let service = start("[server]\nprocesses = 2\nworkers = 1\n[logging]\nlevel = \"INFO\"\n");
    let pids = service.worker_pids(2);
    let config = |level: &str, greeting: &str| {
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\nprocesses = 2\nworkers = 1\n[logging]\nlevel = {level}\n[greeting]\ntemplate = \"{greeting}\"\n"
        )
    };
    post_level_everywhere(&service, &pids, r#"{"level": "DEBUG"}"#, "DEBUG");

    let before = service.log().len();
    std::fs::write(service.config_path(), config("\"ERROR\"", "hi {name}")).unwrap();
    poll_until_all_answer(&service, &pids, "ERROR");
    for pid in pids.iter().chain([&service.pid()]) {
        service.wait_log_after(
            before,
            &format!(
                "[{pid}] the file's new value of `logging.level` replaced the one set at run time"
            ),
        );
    }

    // A runtime level survives an edit of another key...
    post_level_everywhere(&service, &pids, r#"{"level": "trace"}"#, "TRACE");
    let before = service.log().len();
    std::fs::write(service.config_path(), config("\"ERROR\"", "hey {name}")).unwrap();
    for pid in &pids {
        service.wait_log_after(before, &format!("[{pid}] greeting config changed"));
    }
    poll_until_all_answer(&service, &pids, "TRACE");

    // ...and goes on a null: back to the file's level everywhere.
    post_level_everywhere(&service, &pids, r#"{"level": null}"#, "ERROR");
    let missing = post_json(service.address, "/manage/logging/level", r#"{}"#);
    assert_eq!(missing.status, 400, "{}", missing.body);

    // A level the logger cannot use is refused like invalid TOML, in every
    // process; the supervisor says so for the service.
    let before = service.log().len();
    std::fs::write(service.config_path(), config("5", "hey {name}")).unwrap();
    let line = service.wait_log_after(before, &format!("[{}] config reload failed", service.pid()));
    assert!(line.contains("`logging.level`"), "{line}");
    poll_until_all_answer(&service, &pids, "ERROR");
}
