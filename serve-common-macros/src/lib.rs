//! Procedural macros of `serve-common`. Use them through `serve_common`,
//! which re-exports them and documents them; generated code reaches the
//! runtime only through `::serve_common::__private`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cached;
mod on_event;
mod pattern;

use proc_macro::TokenStream;

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

/// See `serve_common::Cached`.
#[proc_macro_derive(Cached, attributes(cache, input))]
pub fn derive_cached(input: TokenStream) -> TokenStream {
    cached::derive(input.into()).into()
}
