//! One scrape for the whole service: the scraped worker asks the other
//! processes of its group (the supervisor and its workers) over the IPC
//! link for their values, waits a bounded time, and sums.
//!
//! Every answer goes to the whole group, so each process keeps the newest
//! values of each other one; the supervisor also keeps the last values of
//! each worker that exited and hands their sum out with its own answer.
//! So a counter never goes down from one scrape to the next: a worker that
//! is slow to answer counts with the last values the scraped worker saw
//! of it, and one that died with the last values the supervisor saw (every
//! value a scrape ever used went to the supervisor too).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::snapshot::Snapshot;
use crate::event::{self, Event};

/// Asks the group's processes for their metrics (payload: [`Gather`]).
pub(crate) const GATHER_EVENT: &str = "serve_common.metrics.gather";
/// A process's metrics (payload: [`Answer`]).
pub(crate) const ANSWER_EVENT: &str = "serve_common.metrics.answer";

/// Retired workers' values are kept one by one this long (an answer sent
/// just before a worker died may still arrive), then summed.
#[cfg_attr(not(feature = "actix"), allow(dead_code))]
const RETIRED_KEPT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Gather {
    id: u64,
    /// The supervisor's pid: processes of other services on the same IPC
    /// group stay out.
    group: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Answer {
    id: u64,
    group: u32,
    pid: u32,
    /// Per process, growing: the newest answer wins.
    seq: u64,
    supervisor: bool,
    snapshot: Snapshot,
    /// A supervisor's: its live workers.
    live: Vec<u32>,
    /// A supervisor's: the summed counters and histograms of the workers
    /// that exited.
    retired: Snapshot,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// The newest answer of each other process of the group.
    records: HashMap<u32, Answer>,
    pending: HashMap<u64, Pending>,
    /// In a supervisor: its workers now.
    live: BTreeSet<u32>,
    /// In a supervisor: the last answers of workers that exited lately.
    retired: HashMap<u32, (Instant, Answer)>,
    /// In a supervisor: the sums of those that exited longer ago.
    folded: Snapshot,
}

struct Pending {
    answers: HashMap<u32, Answer>,
    wake: Arc<tokio::sync::Notify>,
}

static STATE: Lazy<Mutex<State>> = Lazy::new(Mutex::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// This process's group and whether it is its supervisor: `None` outside
/// a service of worker processes linked by IPC (a scrape is then this
/// process's alone).
fn group() -> Option<(u32, bool)> {
    event::ipc_link()?;
    #[cfg(feature = "actix")]
    {
        crate::default::actix::process_group()
    }
    #[cfg(not(feature = "actix"))]
    {
        None
    }
}

/// The supervisor's record of its workers: one started.
#[cfg_attr(not(feature = "actix"), allow(dead_code))]
pub(crate) fn worker_started(pid: u32) {
    STATE.lock().live.insert(pid);
}

/// The supervisor's record of its workers: one exited; its last values
/// stay in the service's sums.
#[cfg_attr(not(feature = "actix"), allow(dead_code))]
pub(crate) fn worker_exited(pid: u32) {
    let mut state = STATE.lock();
    state.live.remove(&pid);
    let now = Instant::now();
    if let Some(answer) = state.records.remove(&pid) {
        state.retired.insert(pid, (now, answer));
    }
    let old: Vec<u32> = state
        .retired
        .iter()
        .filter(|(_, (at, _))| now.duration_since(*at) > RETIRED_KEPT)
        .map(|(pid, _)| *pid)
        .collect();
    for pid in old {
        if let Some((_, answer)) = state.retired.remove(&pid) {
            state.folded.add_sums(&answer.snapshot);
        }
    }
}

fn own_answer(state: &mut State, id: u64, group: u32, supervisor: bool) -> Answer {
    state.seq += 1;
    let mut retired = Snapshot::default();
    if supervisor {
        retired.add_sums(&state.folded);
        for (_, answer) in state.retired.values() {
            retired.add_sums(&answer.snapshot);
        }
    }
    Answer {
        id,
        group,
        pid: std::process::id(),
        seq: state.seq,
        supervisor,
        snapshot: super::local_snapshot(),
        live: if supervisor {
            state.live.iter().copied().collect()
        } else {
            Vec::new()
        },
        retired,
    }
}

/// The bus's inbound hook: answers gathers, keeps answers.
pub(crate) fn on_event(event: &Event) {
    let name = event.name();
    if name != GATHER_EVENT && name != ANSWER_EVENT {
        return;
    }
    let Some((group, supervisor)) = group() else {
        return;
    };
    if name == GATHER_EVENT {
        let gather = match event.payload::<Gather>() {
            Ok(gather) => gather.into_owned(),
            Err(error) => {
                tracing::warn!(%error, "ignoring a malformed metrics request");
                return;
            }
        };
        if gather.group == group {
            let answer = own_answer(&mut STATE.lock(), gather.id, group, supervisor);
            event::bus().notify(ANSWER_EVENT, answer);
        }
        return;
    }
    let answer = match event.payload::<Answer>() {
        Ok(answer) => answer.into_owned(),
        Err(error) => {
            tracing::warn!(%error, "ignoring malformed metrics from another process");
            return;
        }
    };
    if answer.group != group || answer.pid == std::process::id() {
        return;
    }
    let mut state = STATE.lock();
    if let Some(pending) = state.pending.get_mut(&answer.id) {
        pending.answers.insert(answer.pid, answer.clone());
        if complete(&pending.answers) {
            pending.wake.notify_one();
        }
    }
    if let Some((_, retired)) = state.retired.get_mut(&answer.pid) {
        if answer.seq > retired.seq {
            *retired = answer;
        }
        return;
    }
    let newer = state
        .records
        .get(&answer.pid)
        .is_none_or(|known| answer.seq > known.seq);
    if newer {
        state.records.insert(answer.pid, answer);
    }
}

/// Whether the supervisor and every worker it lists (but this one) answered.
fn complete(answers: &HashMap<u32, Answer>) -> bool {
    let me = std::process::id();
    answers
        .values()
        .find(|a| a.supervisor)
        .is_some_and(|supervisor| {
            supervisor
                .live
                .iter()
                .all(|pid| *pid == me || answers.contains_key(pid))
        })
}

/// The service's metrics: this process's, plus (in a worker) those the
/// group's other processes send within `timeout`.
pub(crate) async fn service_snapshot(timeout: Duration) -> Snapshot {
    let me = std::process::id();
    let local = super::local_snapshot();
    let mut total = Snapshot::default();
    total.add_sums(&local);
    total.add_gauges(&local, me);
    let missing = match group() {
        Some((group, false)) => gather(group, local, timeout, &mut total).await,
        _ => 0,
    };
    let name = "serve_common_scrape_missing_workers";
    total.gauge(name, &[], missing as f64);
    total.describe(
        name,
        "Worker processes that did not answer this scrape in time (their counters count with the last values seen)",
    );
    total
}

async fn gather(group: u32, local: Snapshot, timeout: Duration, total: &mut Snapshot) -> usize {
    let me = std::process::id();
    let id = (u64::from(me) << 32) | (NEXT_ID.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
    let wake = Arc::new(tokio::sync::Notify::new());
    let mine = {
        let mut state = STATE.lock();
        state.pending.insert(
            id,
            Pending {
                answers: HashMap::new(),
                wake: wake.clone(),
            },
        );
        state.seq += 1;
        Answer {
            id,
            group,
            pid: me,
            seq: state.seq,
            supervisor: false,
            snapshot: local,
            live: Vec::new(),
            retired: Snapshot::default(),
        }
    };
    // Our own values first, so the supervisor keeps what this scrape shows.
    let bus = event::bus();
    bus.notify(ANSWER_EVENT, mine);
    bus.notify(GATHER_EVENT, Gather { id, group });
    let _ = tokio::time::timeout(timeout, async {
        loop {
            let woken = wake.notified();
            if STATE
                .lock()
                .pending
                .get(&id)
                .is_none_or(|p| complete(&p.answers))
            {
                break;
            }
            woken.await;
        }
    })
    .await;
    let mut state = STATE.lock();
    let answers = state
        .pending
        .remove(&id)
        .map(|p| p.answers)
        .unwrap_or_default();
    let supervisor = answers
        .values()
        .find(|a| a.supervisor)
        .or_else(|| {
            state
                .records
                .values()
                .filter(|a| a.supervisor)
                .max_by_key(|a| a.seq)
        })
        .cloned();
    let mut counted = BTreeSet::from([me]);
    for answer in answers.values().filter(|a| !a.supervisor) {
        total.add_sums(&answer.snapshot);
        total.add_gauges(&answer.snapshot, answer.pid);
        counted.insert(answer.pid);
    }
    let mut missing = 0;
    match &supervisor {
        Some(supervisor) => {
            total.add_sums(&supervisor.snapshot);
            if answers.contains_key(&supervisor.pid) {
                total.add_gauges(&supervisor.snapshot, supervisor.pid);
            }
            total.add_sums(&supervisor.retired);
            for pid in &supervisor.live {
                if counted.contains(pid) {
                    continue;
                }
                missing += 1;
                if let Some(known) = state.records.get(pid) {
                    total.add_sums(&known.snapshot);
                }
            }
        }
        None => {
            // Not even the supervisor's list: the others we know of.
            for (pid, known) in &state.records {
                if !counted.contains(pid) {
                    missing += 1;
                    total.add_sums(&known.snapshot);
                }
            }
        }
    }
    drop(state);
    if missing > 0 {
        tracing::debug!(
            missing,
            "metrics scrape: some processes did not answer in time"
        );
    }
    missing
}
