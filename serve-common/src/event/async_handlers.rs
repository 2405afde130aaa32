//! Async handlers: their futures run on a tokio runtime the bus owns,
//! bounded by a cap on how many are in flight.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use parking_lot::{Condvar, Mutex};

/// What an async handler's adapter returns for one event: the future
/// (owning what it needs), or an error before it could start (a payload
/// of the wrong type).
pub(crate) type AsyncHandlerFn = dyn Fn(&super::Event) -> Result<BoxFuture, String> + Send + Sync;

/// A handler's future.
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The default cap on async handler runs in flight per bus (feature
/// `tokio`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The default time the dispatcher waits for room under the cap before it
/// drops a run (feature `tokio`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);

/// The bus's async side: the runtime (made on first use) and the cap.
pub(crate) struct AsyncRunner {
    runtime: OnceCell<Result<tokio::runtime::Runtime, String>>,
    in_flight: Mutex<usize>,
    room: Condvar,
    max_in_flight: AtomicUsize,
    /// Milliseconds.
    wait: AtomicU64,
    /// Runs dropped because the cap stayed full for `wait`.
    pub(crate) dropped: AtomicU64,
}

impl AsyncRunner {
    pub(crate) fn new() -> Self {
        Self {
            runtime: OnceCell::new(),
            in_flight: Mutex::new(0),
            room: Condvar::new(),
            max_in_flight: AtomicUsize::new(DEFAULT_MAX_IN_FLIGHT),
            wait: AtomicU64::new(DEFAULT_WAIT.as_millis() as u64),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_limits(&self, max_in_flight: usize, wait: Duration) {
        self.max_in_flight
            .store(max_in_flight.max(1), Ordering::Relaxed);
        self.wait.store(
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.room.notify_all();
    }

    pub(crate) fn in_flight(&self) -> usize {
        *self.in_flight.lock()
    }

    /// The runtime: one worker thread, so runs start in the order they
    /// were handed over (registration order within an event).
    pub(crate) fn handle(&self) -> Result<&tokio::runtime::Runtime, String> {
        self.runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("serve-common-async-handlers")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the async handlers' runtime: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Takes a place under the cap, waiting for one at most `wait`: false
    /// if none came (the caller drops the run).
    pub(crate) fn acquire(&self) -> bool {
        let max = self.max_in_flight.load(Ordering::Relaxed);
        let mut in_flight = self.in_flight.lock();
        if *in_flight < max {
            *in_flight += 1;
            return true;
        }
        let deadline = Instant::now() + Duration::from_millis(self.wait.load(Ordering::Relaxed));
        while *in_flight >= self.max_in_flight.load(Ordering::Relaxed) {
            if self.room.wait_until(&mut in_flight, deadline).timed_out()
                && *in_flight >= self.max_in_flight.load(Ordering::Relaxed)
            {
                return false;
            }
        }
        *in_flight += 1;
        true
    }

    pub(crate) fn release(&self) {
        let mut in_flight = self.in_flight.lock();
        *in_flight = in_flight.saturating_sub(1);
        drop(in_flight);
        self.room.notify_one();
    }
}

/// A future whose panic is caught: `Err(payload)`.
pub(crate) struct CatchUnwind(pub(crate) BoxFuture);

impl Future for CatchUnwind {
    type Output = Result<Result<(), String>, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(outcome)) => Poll::Ready(Ok(outcome)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
