//! One scrape for the whole service: the scraped worker asks the other
//! processes of its group (the supervisor and its workers) over the IPC
//! link for their values, waits a bounded time, and sums.
//!
//! Every answer goes to the whole group, so each process keeps the newest
//! values of each other one; the supervisor also keeps the last values of
//! each worker that exited and hands them out with its own answer. Every
//! process's values carry a sequence number of that process, and a scrape
//! counts each process once, with the newest values it has of it from any
//! of these sources. So a counter never goes down from one scrape to the
//! next: a worker that is slow to answer counts with the last values the
//! scraped worker saw of it, and one that died with the last values the
//! supervisor saw (every value a scrape ever used went to the supervisor
//! too).

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

/// One process's values at one time.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    pid: u32,
    /// Per process, growing: the newest record of a process wins.
    seq: u64,
    snapshot: Snapshot,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Answer {
    id: u64,
    group: u32,
    supervisor: bool,
    record: Record,
    /// A supervisor's: its live workers.
    live: Vec<u32>,
    /// A supervisor's: the last values of the workers that exited lately.
    retired: Vec<Record>,
    /// A supervisor's: the summed values of those that exited long ago.
    folded: Snapshot,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// The newest answer of each other process of the group.
    records: HashMap<u32, Answer>,
    pending: HashMap<u64, Pending>,
    /// In a supervisor: its workers now.
    live: BTreeSet<u32>,
    /// In a supervisor: the last values of workers that exited lately.
    retired: HashMap<u32, (Instant, Record)>,
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
    if let Some(answer) = state.records.remove(&pid) {
        retire(&mut state, answer.record);
    }
}

/// Keeps `record` of a worker that exited (the newest one wins), and sums
/// the records of those that exited long ago.
fn retire(state: &mut State, record: Record) {
    let now = Instant::now();
    let newer = state
        .retired
        .get(&record.pid)
        .is_none_or(|(_, known)| record.seq > known.seq);
    if newer {
        state.retired.insert(record.pid, (now, record));
    }
    let old: Vec<u32> = state
        .retired
        .iter()
        .filter(|(_, (at, _))| now.duration_since(*at) > RETIRED_KEPT)
        .map(|(pid, _)| *pid)
        .collect();
    for pid in old {
        if let Some((_, record)) = state.retired.remove(&pid) {
            state.folded.add_sums(&record.snapshot);
        }
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
            // Read /proc and the registry before taking the lock.
            let snapshot = super::local_snapshot();
            let answer = {
                let mut state = STATE.lock();
                state.seq += 1;
                Answer {
                    id: gather.id,
                    group,
                    supervisor,
                    record: Record {
                        pid: std::process::id(),
                        seq: state.seq,
                        snapshot,
                    },
                    live: if supervisor {
                        state.live.iter().copied().collect()
                    } else {
                        Vec::new()
                    },
                    retired: if supervisor {
                        state.retired.values().map(|(_, r)| r.clone()).collect()
                    } else {
                        Vec::new()
                    },
                    folded: if supervisor {
                        state.folded.clone()
                    } else {
                        Snapshot::default()
                    },
                }
            };
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
    let pid = answer.record.pid;
    if answer.group != group || pid == std::process::id() {
        return;
    }
    let mut state = STATE.lock();
    if let Some(pending) = state.pending.get_mut(&answer.id) {
        pending.answers.insert(pid, answer.clone());
        if complete(&pending.answers) {
            pending.wake.notify_one();
        }
    }
    // In the supervisor, values of a worker that is gone (an answer sent
    // just before it exited) are a retired worker's.
    if supervisor && !answer.supervisor && !state.live.contains(&pid) {
        state.records.remove(&pid);
        retire(&mut state, answer.record);
        return;
    }
    let newer = state
        .records
        .get(&pid)
        .is_none_or(|known| answer.record.seq > known.record.seq);
    if newer {
        state.records.insert(pid, answer);
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

/// Removes a scrape's pending entry however the scrape ends (a client
/// that goes away drops the request's future mid-wait).
struct PendingGuard(u64);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        STATE.lock().pending.remove(&self.0);
    }
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
            supervisor: false,
            record: Record {
                pid: me,
                seq: state.seq,
                snapshot: local,
            },
            live: Vec::new(),
            retired: Vec::new(),
            folded: Snapshot::default(),
        }
    };
    let guard = PendingGuard(id);
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
    // What the merge needs, copied out of the lock.
    let (answers, records) = {
        let mut state = STATE.lock();
        let answers = state
            .pending
            .remove(&id)
            .map(|p| p.answers)
            .unwrap_or_default();
        (answers, state.records.clone())
    };
    drop(guard);
    let supervisor = answers
        .values()
        .find(|a| a.supervisor)
        .or_else(|| {
            records
                .values()
                .filter(|a| a.supervisor)
                .max_by_key(|a| a.record.seq)
        })
        .cloned();
    merge(me, &answers, &records, supervisor.as_ref(), total)
}

/// Adds to `total` every process of the group but this one, each once,
/// with the newest values known of it; returns how many live workers did
/// not answer.
fn merge(
    me: u32,
    answers: &HashMap<u32, Answer>,
    records: &HashMap<u32, Answer>,
    supervisor: Option<&Answer>,
    total: &mut Snapshot,
) -> usize {
    // The newest record of each worker, and whether it is this scrape's.
    let mut newest: HashMap<u32, (&Record, bool)> = HashMap::new();
    for answer in answers.values().filter(|a| !a.supervisor) {
        keep_newest(&mut newest, &answer.record, true);
    }
    for answer in records.values().filter(|a| !a.supervisor) {
        keep_newest(&mut newest, &answer.record, false);
    }
    if let Some(supervisor) = supervisor {
        for record in &supervisor.retired {
            keep_newest(&mut newest, record, false);
        }
    }
    // Who counts: with the supervisor's word, its live and retired workers
    // and whoever answered or is known alive since; else every one known.
    let mut counted: BTreeSet<u32> = newest.keys().copied().collect();
    let missing;
    if let Some(supervisor) = supervisor {
        total.add_sums(&supervisor.record.snapshot);
        if answers.contains_key(&supervisor.record.pid) {
            total.add_gauges(&supervisor.record.snapshot, supervisor.record.pid);
        }
        total.add_sums(&supervisor.folded);
        counted.extend(supervisor.live.iter().copied());
        missing = supervisor
            .live
            .iter()
            .filter(|pid| **pid != me && !answers.contains_key(pid))
            .count();
    } else {
        missing = newest.values().filter(|(_, fresh)| !fresh).count();
    }
    counted.remove(&me);
    for pid in &counted {
        if let Some((record, fresh)) = newest.get(pid) {
            total.add_sums(&record.snapshot);
            if *fresh {
                total.add_gauges(&record.snapshot, *pid);
            }
        }
    }
    if missing > 0 {
        tracing::debug!(
            missing,
            "metrics scrape: some processes did not answer in time"
        );
    }
    // The supervisor's list is the truth about who lives: records of
    // workers it no longer lists are its retired ones now.
    if let Some(supervisor) = supervisor.filter(|s| answers.contains_key(&s.record.pid)) {
        let live: BTreeSet<u32> = supervisor.live.iter().copied().collect();
        STATE
            .lock()
            .records
            .retain(|pid, answer| answer.supervisor || live.contains(pid));
    }
    missing
}

fn keep_newest<'a>(newest: &mut HashMap<u32, (&'a Record, bool)>, record: &'a Record, fresh: bool) {
    let replace = newest
        .get(&record.pid)
        .is_none_or(|(known, _)| record.seq > known.seq);
    if replace {
        newest.insert(record.pid, (record, fresh));
    }
}
