//! The default, opinionated implementations of common functionality (the
//! Python original's `default` package): here we trade versatility for ease of use.

#[cfg(feature = "actix")]
pub mod actix;
pub mod logging;
#[cfg(feature = "actix")]
pub mod management;
