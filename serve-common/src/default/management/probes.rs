//! Health checks with a kind and a timeout, run concurrently off the
//! request's thread; the process's readiness (starting, ready, stopping);
//! the liveness ping through the event bus.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use parking_lot::{Mutex, RwLock};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CheckResult, Details};

/// How long a check may run before it is reported as failing (unless its
/// [`HealthCheckBuilder::timeout`] says otherwise).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the liveness probe waits for the event dispatcher.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Which probe a check answers to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// `/manage/health/ready` (and `/manage/health`): whether this process
    /// should get traffic now (a database reachable, a cache warm). The
    /// default.
    #[default]
    Readiness,
    /// `/manage/health/live` (and `/manage/health`): whether this process
    /// works at all; failing, an orchestrator restarts it. Keep these few.
    Liveness,
}

type CheckFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
type DetailsFn = Arc<dyn Fn() -> Details + Send + Sync>;

#[derive(Clone)]
pub(super) struct HealthCheck {
    check: CheckFn,
    details: Option<DetailsFn>,
    kind: CheckKind,
    timeout: Duration,
    /// When the run still going (past its timeout) started.
    running: Arc<Mutex<Option<Instant>>>,
}

static CHECKS: Lazy<RwLock<Vec<(String, HealthCheck)>>> = Lazy::new(|| RwLock::new(Vec::new()));

/// Describes a health check: [`health_check`].
#[must_use = "the check is added by `register`"]
pub struct HealthCheckBuilder {
    name: String,
    kind: CheckKind,
    timeout: Duration,
    details: Option<DetailsFn>,
}

impl std::fmt::Debug for HealthCheckBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheckBuilder")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Starts describing the check `name`: a readiness check with a 2 s
/// timeout, unless told otherwise.
///
/// ```
/// use std::time::Duration;
/// use serve_common::default::management;
///
/// management::health_check("worker-loop")
///     .liveness()
///     .timeout(Duration::from_millis(500))
///     .register(|| Ok(()));
/// ```
pub fn health_check(name: impl Into<String>) -> HealthCheckBuilder {
    HealthCheckBuilder {
        name: name.into(),
        kind: CheckKind::Readiness,
        timeout: DEFAULT_CHECK_TIMEOUT,
        details: None,
    }
}

impl HealthCheckBuilder {
    /// A liveness check (`/manage/health/live`) rather than a readiness one.
    pub fn liveness(mut self) -> Self {
        self.kind = CheckKind::Liveness;
        self
    }

    /// How long the check may run: past it, the check is reported as
    /// failing ("timed out"), and until that run ends, later requests
    /// report it as still running instead of starting another.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What the check reports beside its result, as its `details` object.
    pub fn details<D>(mut self, details: D) -> Self
    where
        D: Fn() -> Details + Send + Sync + 'static,
    {
        self.details = Some(Arc::new(details));
        self
    }

    /// Adds the check (replacing one of the same name).
    pub fn register<F>(self, check: F)
    where
        F: Fn() -> Result<(), String> + Send + Sync + 'static,
    {
        let check = HealthCheck {
            check: Arc::new(check),
            details: self.details,
            kind: self.kind,
            timeout: self.timeout,
            running: Arc::new(Mutex::new(None)),
        };
        let mut checks = CHECKS.write();
        checks.retain(|(n, _)| *n != self.name);
        checks.push((self.name, check));
    }
}

pub(super) fn remove(name: &str) -> bool {
    let mut checks = CHECKS.write();
    let before = checks.len();
    checks.retain(|(n, _)| n != name);
    checks.len() != before
}

/// Runs the checks of `kind` (all with `None`) at once, each on the
/// blocking pool under its timeout.
pub(super) async fn run_checks(kind: Option<CheckKind>) -> BTreeMap<String, CheckResult> {
    let checks: Vec<(String, HealthCheck)> = CHECKS
        .read()
        .iter()
        .filter(|(_, c)| kind.is_none_or(|k| c.kind == k))
        .cloned()
        .collect();
    let mut runs = tokio::task::JoinSet::new();
    for (name, check) in checks {
        runs.spawn(async move {
            let result = run_one(&check).await;
            (name, result)
        });
    }
    let mut results = BTreeMap::new();
    while let Some(done) = runs.join_next().await {
        if let Ok((name, result)) = done {
            if let Some(error) = &result.error {
                tracing::warn!(check = %name, %error, "health check failed");
            }
            results.insert(name, result);
        }
    }
    results
}

async fn run_one(check: &HealthCheck) -> CheckResult {
    let started = Instant::now();
    let result = |outcome: Result<(), String>, details: Option<Details>| CheckResult {
        ok: outcome.is_ok(),
        error: outcome.err(),
        details: details.map(|d| d.into_iter().collect()),
        kind: check.kind,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    {
        let mut running = check.running.lock();
        if let Some(since) = *running {
            return result(
                Err(format!(
                    "still running (started {} ms ago, timeout {} ms)",
                    since.elapsed().as_millis(),
                    check.timeout.as_millis()
                )),
                None,
            );
        }
        *running = Some(started);
    }
    let (run, details, running) = (
        check.check.clone(),
        check.details.clone(),
        check.running.clone(),
    );
    let blocking = tokio::task::spawn_blocking(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run()))
            .unwrap_or_else(|_| Err("the check panicked".to_owned()));
        let details = details.and_then(|details| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| details())).ok()
        });
        *running.lock() = None;
        (outcome, details)
    });
    match tokio::time::timeout(check.timeout, blocking).await {
        Ok(Ok((outcome, details))) => result(outcome, details),
        Ok(Err(_)) => result(Err("the check could not run".to_owned()), None),
        Err(_) => result(
            Err(format!("timed out after {} ms", check.timeout.as_millis())),
            None,
        ),
    }
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;
static READINESS: AtomicU8 = AtomicU8::new(STARTING);

/// Where this process is in its life, as `/manage/health/ready` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not serving yet.
    Starting,
    /// Serving.
    Ready,
    /// A graceful stop began: in-flight requests finish, new traffic
    /// should go elsewhere.
    Stopping,
}

/// This process's [`Phase`].
pub fn phase() -> Phase {
    match READINESS.load(Ordering::Acquire) {
        STARTING => Phase::Starting,
        READY => Phase::Ready,
        _ => Phase::Stopping,
    }
}

/// Says start-up is over: [`serve`](crate::default::actix::serve) calls
/// it once it listens. Call it yourself when you run the app in a server
/// of your own ([`Service::app`](crate::default::actix::Service::app)).
pub fn mark_ready() {
    let _ = READINESS.compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
}

/// Back to "not serving yet": a [`crate::testing`] service starting after
/// another one stopped in the same process.
#[cfg(feature = "testing")]
pub(crate) fn reset_readiness() {
    READINESS.store(STARTING, Ordering::Release);
}

/// Says a graceful stop began (`/manage/health/ready` answers 503 from
/// now on): `serve` calls it on SIGTERM or SIGINT.
pub fn mark_stopping() {
    READINESS.store(STOPPING, Ordering::Release);
}

/// Whether this process's event dispatcher answers: a barrier queued
/// behind what waits, awaited for up to a second (nothing is registered,
/// so no link changes its subscriptions).
pub(super) async fn ping_dispatcher() -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, crate::event::bus().barrier()).await {
        Ok(()) => Ok(()),
        Err(_) => Err(format!(
            "the event dispatcher did not answer within {} ms (a handler is stuck?)",
            PING_TIMEOUT.as_millis()
        )),
    }
}
