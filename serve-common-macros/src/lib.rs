//! Procedural macros of `serve-common`. Use them through `serve_common`,
//! which re-exports them and documents them; generated code reaches the
//! runtime only through `::serve_common::__private`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api_operation;
mod cached;
mod main_attr;
mod on_event;
mod pattern;
mod time_and_log;

use proc_macro::TokenStream;
use quote::{ToTokens, quote};

/// The path of the runtime crate in generated code: `::serve_common`, or
/// what `crate = "path"` gives (for a dependency renamed in Cargo.toml).
#[derive(Clone)]
pub(crate) struct Runtime(proc_macro2::TokenStream, Option<proc_macro2::Span>);

impl Default for Runtime {
    fn default() -> Self {
        Self(quote!(::serve_common), None)
    }
}

impl Runtime {
    /// For generated code inside one block: a `use` of a `crate = "path"`
    /// (so a path that names nothing is one error, on the option) and the
    /// runtime's name after it; for the default, nothing and `::serve_common`.
    pub(crate) fn imported(&self) -> (proc_macro2::TokenStream, Self) {
        match self.1 {
            None => (proc_macro2::TokenStream::new(), self.clone()),
            Some(span) => {
                let path = &self.0;
                let import = quote::quote_spanned!(span=> use #path as __serve_common_runtime;);
                (import, Self(quote!(__serve_common_runtime), Some(span)))
            }
        }
    }

    /// `= "path"`, after the option's `crate` keyword.
    pub(crate) fn parse_value(input: syn::parse::ParseStream<'_>) -> syn::Result<Self> {
        input.parse::<syn::Token![=]>()?;
        Self::from_value(&input.parse()?)
    }

    /// The path in a string literal, as `crate = "::sc"` gives it.
    pub(crate) fn from_value(value: &syn::Expr) -> syn::Result<Self> {
        const EXPECTED: &str =
            "`crate` takes the path of serve-common as a string, as in `crate = \"::sc\"`";
        let syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(text),
            ..
        }) = value
        else {
            return Err(syn::Error::new_spanned(value, EXPECTED));
        };
        let path: syn::Path = text
            .parse()
            .map_err(|_| syn::Error::new(text.span(), EXPECTED))?;
        Ok(Self(path.into_token_stream(), Some(text.span())))
    }

    /// `<path>::__private`, where generated code finds the runtime's
    /// internals.
    pub(crate) fn private(&self) -> proc_macro2::TokenStream {
        let path = &self.0;
        quote!(#path::__private)
    }

    /// [`Self::private`], every token spanned at `span`: inside
    /// `quote_spanned!`, so an error there points where the rest does.
    pub(crate) fn private_at(&self, span: proc_macro2::Span) -> proc_macro2::TokenStream {
        respan(self.private(), span)
    }
}

/// `tokens`, every one (and every group) spanned at `span`.
pub(crate) fn respan(
    tokens: proc_macro2::TokenStream,
    span: proc_macro2::Span,
) -> proc_macro2::TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(group) = &tree {
                let mut new =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                new.set_span(span);
                tree = proc_macro2::TokenTree::Group(new);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

impl ToTokens for Runtime {
    fn to_tokens(&self, tokens: &mut proc_macro2::TokenStream) {
        self.0.to_tokens(tokens);
    }
}

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

/// See `serve_common::default::actix::api_operation`.
#[proc_macro_attribute]
pub fn api_operation(args: TokenStream, item: TokenStream) -> TokenStream {
    api_operation::expand(args.into(), item.into()).into()
}

/// See `serve_common::main`.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    main_attr::expand(args.into(), item.into()).into()
}
