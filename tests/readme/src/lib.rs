//! The README's Rust examples, compiled in a crate whose only dependencies
//! are serve-common and serde, as the README says a service needs: a new
//! user copying an example gets code that builds. (The doc tests of
//! `serve-common` compile them too, but with every dependency of
//! serve-common in scope.) Each block is a module, `line_<n>`, named after
//! the README line it starts on. The testing example is a test module:
//! `cargo test` runs it.
#![allow(dead_code, missing_docs, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/readme_examples.rs"));
