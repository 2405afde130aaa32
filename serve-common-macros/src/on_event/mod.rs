//! `#[on_event("pattern", options...)]`: parse, check, expand.

mod check;
mod expand;
mod parse;

use proc_macro2::TokenStream;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let result = parse::Args::parse(args).and_then(|args| {
        let func: syn::ItemFn = syn::parse2(item.clone())?;
        let signature = check::signature(&func)?;
        Ok(expand::handler(&args, &func, &signature))
    });
    crate::or_fallback(result, || item)
}
