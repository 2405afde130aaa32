//! The default, opinionated implementations of common functionality (the
//! seed's `default` package): here we trade versatility for ease of use.

pub mod logging;
