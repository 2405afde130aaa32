//! What generated code needs. Not a public API: it changes without notice.

pub use inventory;
pub use tracing;

pub use crate::log_util::TimedCall;
#[cfg(feature = "tokio")]
pub use crate::main_entry::{run as run_main, MainOptions};

/// What `#[serve_common::main]` expands to: present with the `tokio`
/// feature only, so without it the one error names the feature.
#[cfg(feature = "tokio")]
pub fn serve_common_main_needs_the_tokio_feature<F, Fut, R>(
    config: Option<&'static str>,
    ipc: bool,
    logging: bool,
    package: &'static str,
    version: &'static str,
    body: F,
) -> R
where
    F: FnOnce() -> Fut,
    Fut: ::std::future::Future<Output = R>,
{
    run_main(
        MainOptions {
            config,
            ipc,
            logging,
            package,
            version,
        },
        body,
    )
}

pub use crate::cached::{CacheAccess, CacheSlots, HasCache};
pub use once_cell::sync::OnceCell;
pub use std::sync::OnceLock;

/// The parts of the `Result` a `#[cached(result)]` method returns.
#[diagnostic::on_unimplemented(
    message = "`#[cached(result)]` needs a method returning a `Result`, not `{Self}`"
)]
pub trait CachedResult {
    /// What is kept.
    type Ok;
    /// What is returned and not kept.
    type Err;
    /// As a `Result`.
    fn into_result(self) -> Result<Self::Ok, Self::Err>;
}

impl<T, E> CachedResult for Result<T, E> {
    type Ok = T;
    type Err = E;
    #[inline(always)]
    fn into_result(self) -> Result<T, E> {
        self
    }
}

/// The slots of `owner`, reached through its key `K`.
#[inline(always)]
pub fn slots<K: CacheAccess<O> + ?Sized, O: ?Sized>(owner: &O) -> &K::Slots {
    K::__slots(owner)
}

/// The slots of `owner`, mutably.
#[inline(always)]
pub fn slots_mut<K: CacheAccess<O> + ?Sized, O: ?Sized>(owner: &mut O) -> &mut K::Slots {
    K::__slots_mut(owner)
}

/// Invalidates what depends on an `#[input]` field of `owner`.
#[inline(always)]
pub fn invalidate_input<O: HasCache + ?Sized>(owner: &mut O, input: u64) {
    <O::Key as CacheSlots>::__invalidate_input(
        <O::Key as CacheAccess<O>>::__slots_mut(owner),
        input,
    );
}

/// The checks of a `#[cached]` impl that need the struct's fields.
pub use serve_common_macros::__cached_check as cached_check;

use crate::event::{Event, Payload};
use serde::de::DeserializeOwned;

/// An acknowledgement option of `#[on_event]`.
#[derive(Clone, Copy, Debug)]
pub enum AckDef {
    /// No acknowledgement.
    None,
    /// `completed:<event>`.
    Completed,
    /// A chosen name.
    Named(&'static str),
}

/// One `#[on_event]` handler, collected with `inventory`.
pub struct OnEventHandler {
    /// The pattern literal, validated by the macro.
    pub pattern: &'static str,
    /// Single use.
    pub once: bool,
    /// Acknowledgement.
    pub ack: AckDef,
    /// Runs in a supervisor process too.
    pub supervisor: bool,
    /// Runs in one process of the service per event.
    pub one_per_service: bool,
    /// `module::path::fn_name`, for logs.
    pub name: &'static str,
    /// `module_path!()`, for ordering.
    pub module: &'static str,
    /// The line of the fn, for ordering.
    pub line: u32,
    /// The generated adapter.
    pub call: HandlerCall,
}

/// An `#[on_event]` handler's adapter.
#[derive(Clone, Copy)]
pub enum HandlerCall {
    /// A sync fn: runs on the dispatcher thread.
    Sync(fn(&Event) -> Result<(), String>),
    /// An `async fn`: makes the future the bus's runtime runs.
    #[cfg(feature = "tokio")]
    Async(fn(&Event) -> Result<AsyncRun, String>),
}

/// An async handler's run, as its adapter makes it.
pub type AsyncRun =
    ::std::pin::Pin<Box<dyn ::std::future::Future<Output = Result<(), String>> + Send>>;

/// What an `#[on_event]` `async fn` expands to: present with the `tokio`
/// feature only, so without it the error names the feature.
#[cfg(feature = "tokio")]
pub const fn async_on_event_needs_the_tokio_feature_of_serve_common(
    start: fn(&Event) -> Result<AsyncRun, String>,
) -> HandlerCall {
    HandlerCall::Async(start)
}

inventory::collect!(OnEventHandler);

/// Reads an event's payload for a typed `#[on_event]` handler.
pub fn payload<T: DeserializeOwned + 'static>(event: &Event) -> Result<Payload<'_, T>, String> {
    event.payload::<T>().map_err(|e| e.to_string())
}

/// Turns a handler's return value into the loop's outcome.
pub fn outcome<R: crate::HandlerOutcome>(r: R) -> Result<(), String> {
    r.into_outcome()
}

#[cfg(feature = "actix")]
pub use ::apistos;
#[cfg(feature = "actix")]
pub use ::schemars;
