//! Procedural macros of `serve-common`. Use them through `serve_common`,
//! which re-exports them and documents them; generated code reaches the
//! runtime only through `::serve_common::__private`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cached;
mod main_attr;
mod on_event;
mod pattern;
mod time_and_log;

use proc_macro::TokenStream;

/// The expansion, or the error followed by `fallback` (the user's item,
/// cleaned up), so one mistake does not cascade into "cannot find" errors
/// elsewhere.
fn or_fallback(
    result: syn::Result<proc_macro2::TokenStream>,
    fallback: impl FnOnce() -> proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    result.unwrap_or_else(|error| {
        let mut tokens = error.into_compile_error();
        tokens.extend(fallback());
        tokens
    })
}

/// All of `errors` as one (each shown on its own span), if any.
fn combine(errors: Vec<syn::Error>) -> Option<syn::Error> {
    errors.into_iter().reduce(|mut all, error| {
        all.combine(error);
        all
    })
}

/// See `serve_common::on_event`.
#[proc_macro_attribute]
pub fn on_event(args: TokenStream, item: TokenStream) -> TokenStream {
    on_event::expand(args.into(), item.into()).into()
}

/// See `serve_common::cached`.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    cached::attribute(args.into(), item.into()).into()
}

/// See `serve_common::dependency`.
#[proc_macro_attribute]
pub fn dependency(args: TokenStream, item: TokenStream) -> TokenStream {
    cached::stray("dependency", args.into(), item.into()).into()
}

/// See `serve_common::setter`.
#[proc_macro_attribute]
pub fn setter(args: TokenStream, item: TokenStream) -> TokenStream {
    cached::stray("setter", args.into(), item.into()).into()
}

/// See `serve_common::compute`.
#[proc_macro_attribute]
pub fn compute(args: TokenStream, item: TokenStream) -> TokenStream {
    cached::stray("compute", args.into(), item.into()).into()
}

/// See `serve_common::Cached`.
#[proc_macro_derive(Cached, attributes(cache, input))]
pub fn derive_cached(input: TokenStream) -> TokenStream {
    cached::derive(input.into()).into()
}

/// The checks of a `#[cached]` impl that need the struct's fields; called
/// through the macro `#[derive(Cached)]` generates. Not a public API.
#[doc(hidden)]
#[proc_macro]
pub fn __cached_check(input: TokenStream) -> TokenStream {
    cached::check_fields(input.into()).into()
}

/// See `serve_common::time_and_log`.
#[proc_macro_attribute]
pub fn time_and_log(args: TokenStream, item: TokenStream) -> TokenStream {
    time_and_log::expand(args.into(), item.into()).into()
}

/// See `serve_common::main`.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    main_attr::expand(args.into(), item.into()).into()
}
