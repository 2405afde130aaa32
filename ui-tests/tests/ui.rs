//! Every misuse of a macro is a compile error with a span on the offending
//! token. One misuse per file under `tests/ui/<macro>/`.
//!
//! The `.stderr` snapshots were made with rustc 1.95.0 and the default
//! features (`tokio` and `actix`: which crates are in the build changes
//! how rustc spells some paths, `String` or `std::string::String`). To
//! refresh them after a compiler or macro change: `TRYBUILD=overwrite
//! cargo test -p serve-common-ui-tests`, then review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    // With the features the snapshots were made with.
    #[cfg(all(feature = "tokio", feature = "actix"))]
    {
        t.compile_fail("tests/ui/on_event/*.rs");
        t.compile_fail("tests/ui/cached/*.rs");
        t.compile_fail("tests/ui/time_and_log/*.rs");
        t.compile_fail("tests/ui/main/*.rs");
        // Several independent mistakes in one item: one error each.
        t.compile_fail("tests/ui/multi/*.rs");
        t.pass("tests/pass/*.rs");
        // What needs serve-common's `tokio` feature.
        t.compile_fail("tests/ui/tokio/*.rs");
        t.pass("tests/pass-tokio/*.rs");
        // `#[api_operation]`, with the web service (feature `actix`).
        t.compile_fail("tests/ui/api_operation/*.rs");
        t.pass("tests/pass-actix/*.rs");
    }
    // Without `tokio` (`cargo test -p serve-common-ui-tests
    // --no-default-features`): what needs it is refused, clearly; and
    // what does not still compiles.
    #[cfg(not(feature = "tokio"))]
    {
        t.compile_fail("tests/ui/no-tokio/*.rs");
        t.pass("tests/pass/*.rs");
    }
}
