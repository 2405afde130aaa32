use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Core, Event};

/// The slot a waiter's one-shot handler fills. Blocking waiters park their
/// thread (a futex wake, the cheapest cross-thread wake-up); async waiters
/// leave a `Waker`.
#[derive(Default)]
pub(crate) struct WaitSlot {
    state: Mutex<SlotState>,
    /// Set once filled: lets a waiter spin without the lock.
    filled: AtomicBool,
}

#[derive(Default)]
struct SlotState {
    event: Option<Event>,
    thread: Option<Thread>,
    waker: Option<Waker>,
}

impl WaitSlot {
    pub(crate) fn fill(&self, event: &Event) {
        let (thread, waker) = {
            let mut state = self.state.lock();
            if state.event.is_none() {
                state.event = Some(event.clone());
            }
            self.filled.store(true, Ordering::Release);
            (state.thread.take(), state.waker.take())
        };
        if let Some(thread) = thread {
            thread.unpark();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Blocks until filled or the deadline passes.
    pub(crate) fn wait_until(&self, deadline: Instant) -> Option<Event> {
        let spin = super::SPIN.min(deadline.saturating_duration_since(Instant::now()));
        super::spin_until(|| self.filled.load(Ordering::Acquire), spin);
        loop {
            {
                let mut state = self.state.lock();
                if let Some(event) = state.event.take() {
                    return Some(event);
                }
                state.thread = Some(thread::current());
            }
            let now = Instant::now();
            if now >= deadline {
                return self.state.lock().event.take();
            }
            thread::park_timeout(deadline - now);
        }
    }

    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Event> {
        let mut state = self.state.lock();
        match state.event.take() {
            Some(event) => Poll::Ready(event),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Waiting for an event that did not fire yet, or timing out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WaitError {
    /// Nothing matching arrived in time.
    #[error("no event matching `{pattern}` within {timeout:?}")]
    Timeout {
        /// What was waited for.
        pattern: String,
        /// How long.
        timeout: Duration,
    },
    /// The pattern does not compile.
    #[error(transparent)]
    Pattern(#[from] super::PatternError),
    /// A blocking wait from a handler of the same bus: the event could only
    /// be dispatched after the handler returns, so waiting would hang.
    #[error(
        "cannot block on `{pattern}` from the bus's own dispatcher thread (inside a handler); wait from another thread"
    )]
    OnDispatcherThread {
        /// What was waited for.
        pattern: String,
    },
}

/// A pending wait for the next event matching a pattern, from
/// [`EventBus::wait_for`](super::EventBus::wait_for).
///
/// The wait is registered when the waiter is created, not when you start
/// waiting: create it *before* doing what triggers the event and the event
/// cannot slip past (the original's race, closed by design). Block with
/// [`wait`](Self::wait) or `.await` it (any executor; wrap it in your
/// runtime's timeout). Dropping it unregisters the wait.
#[must_use = "a waiter does nothing unless waited on"]
pub struct EventWaiter {
    pub(crate) slot: Arc<WaitSlot>,
    pub(crate) id: u64,
    pub(crate) core: Weak<Core>,
    pub(crate) pattern: String,
}

impl EventWaiter {
    /// Blocks until a matching event arrives, at most `timeout`. From a
    /// handler of the same bus this is an error at once
    /// ([`WaitError::OnDispatcherThread`]), not a hang.
    pub fn wait(self, timeout: Duration) -> Result<Event, WaitError> {
        if self
            .core
            .upgrade()
            .is_some_and(|core| core.is_dispatcher_thread())
        {
            return Err(WaitError::OnDispatcherThread {
                pattern: self.pattern.clone(),
            });
        }
        self.slot
            .wait_until(Instant::now() + timeout)
            .ok_or_else(|| WaitError::Timeout {
                pattern: self.pattern.clone(),
                timeout,
            })
    }

    /// The event, if it arrived already; does not block.
    pub fn try_take(&self) -> Option<Event> {
        self.slot.state.lock().event.take()
    }
}

impl Future for EventWaiter {
    type Output = Event;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Event> {
        self.slot.poll(cx)
    }
}

impl Drop for EventWaiter {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.registry.lock().remove(self.id);
        }
    }
}
