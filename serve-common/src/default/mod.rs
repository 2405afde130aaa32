//! The default, opinionated implementations of common functionality (the
//! Python original's `default` package): here we trade versatility for ease of use.

#[cfg(feature = "actix")]
pub mod actix;
/// The HTTP errors actix and the management endpoints share.
#[cfg(feature = "actix")]
pub(crate) mod errors;
pub mod logging;
#[cfg(feature = "actix")]
pub mod management;
