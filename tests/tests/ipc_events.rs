//! Events and config across three real processes joined by IPC.
#![forbid(unsafe_code)]

use std::path::Path;

use serve_common::ipc;
use serve_common_tests::Proc;
use serve_common_tests::ipc_support::{Members, events_members};

const HELPER: &str = env!("CARGO_BIN_EXE_ipc_helper");

fn server() -> &'static str {
    serve_common_tests::ipc_support::shared_server(HELPER)
}

/// Three processes of one service: same server, same config file.
fn service(config: &str) -> Members {
    let plain: &[&str] = &[];
    events_members(HELPER, server(), &[plain, plain, plain], config, false)
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn count(process: &Proc, line: &str) -> usize {
    process.seen().iter().filter(|l| l.as_str() == line).count()
}

#[test]
fn an_event_runs_every_processs_handler_exactly_once() {
    let mut service = service("");
    service.processes[0].send("notify test.one 42");
    // Same sender, same order: once the barrier is handled everywhere, any
    // duplicate of the first event would have been handled before it.
    service.processes[0].send("notify test.barrier 1");
    for process in &mut service.processes {
        process.expect("handled test.barrier 1");
        assert_eq!(
            count(process, "handled test.one 42"),
            1,
            "{:?}",
            process.seen()
        );
    }
}

#[test]
fn a_config_edit_runs_each_handler_once_per_process() {
    let mut service = service("[a]\nx = 1\n");
    replace(&service.config, "[a]\nx = 2\n");
    for process in &mut service.processes {
        process.expect("handled config:a.x 2");
    }
    // Barriers: a second edit, an event from another process, and each
    // bus run dry; a duplicate of the first would have shown by then.
    replace(&service.config, "[a]\nx = 2\n[b]\ny = 1\n");
    service.processes[0].send("notify test.barrier 3");
    for process in &mut service.processes {
        process.expect_seen("handled config:b.y 1");
        process.expect_seen("handled test.barrier 3");
        process.send("ping 3");
        process.expect("pong 3");
        assert_eq!(
            count(process, "handled config:a.x 2"),
            1,
            "{:?}",
            process.seen()
        );
    }
}

#[test]
fn a_runtime_set_reaches_every_process_once() {
    let mut service = service("[s]\nv = 1\n");
    service.processes[1].send("set s.v 7");
    service.processes[1].send("notify test.barrier 2");
    for process in &mut service.processes {
        process.expect("handled test.barrier 2");
        // Applying a remote set queues the local `config:` event behind the
        // barrier: let the bus run dry first.
        process.send("ping 1");
        process.expect("pong 1");
        assert_eq!(
            count(process, "handled config:s.v 7"),
            1,
            "{:?}",
            process.seen()
        );
        process.send("get s.v");
        assert_eq!(process.expect("value "), "value 7");
    }
}

#[test]
fn every_toml_value_round_trips_across_processes() {
    let mut service = service("");
    service.processes[2].send("notify-values");
    let local = service.processes[2].expect("values ");
    assert!(
        local.contains("1979-05-27T07:32:00-08:00") && local.contains("07:32:00"),
        "{local}"
    );
    for process in &mut service.processes[..2] {
        assert_eq!(process.expect("values "), local, "a remote copy differs");
    }
}

#[test]
fn a_message_that_is_not_an_event_is_dropped_and_events_keep_flowing() {
    let mut service = service("");
    // A member of the events group that speaks nonsense.
    let intruder = ipc::join_group::<String>(serve_common::event::EVENTS_GROUP).unwrap();
    intruder.send(&"not an event".to_owned()).unwrap();
    intruder.send_bytes(&[0xff, 0x00, 0x13]).unwrap();
    service.processes[0].send("notify test.after 5");
    for process in &mut service.processes {
        process.expect("handled test.after 5");
    }
    // Nonsense again, then another event: the receive loops are alive.
    intruder.send(&"more nonsense".to_owned()).unwrap();
    service.processes[1].send("notify test.later 6");
    for process in &mut service.processes {
        process.expect("handled test.later 6");
    }
}

#[test]
fn a_bus_links_to_ipc_once() {
    server();
    let bus = serve_common::event::EventBus::new();
    let _link = bus.enable_ipc().unwrap();
    assert!(matches!(
        bus.enable_ipc(),
        Err(ipc::IpcError::AlreadyEnabled)
    ));
}
