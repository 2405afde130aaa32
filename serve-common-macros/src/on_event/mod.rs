//! `#[on_event("pattern", options...)]`: parse, check, expand.

mod check;
mod expand;
mod parse;

use proc_macro2::TokenStream;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let result = (|| {
        // Syntax errors stop here; every other mistake of the arguments
        // and of the signature is reported, together.
        let parsed = parse::Args::parse(args);
        let func: syn::ItemFn = syn::parse2(item.clone())?;
        let (args, mut errors) = parsed?;
        let (signature, signature_errors) = check::signature(&func);
        errors.extend(signature_errors);
        match crate::combine(errors) {
            Some(error) => Err(error),
            None => Ok(expand::handler(&args, &func, &signature)),
        }
    })();
    crate::or_fallback(result, || item)
}
