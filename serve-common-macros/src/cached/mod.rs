//! `#[derive(Cached)]` and `#[cached] impl`: parse -> check -> expand.

mod check;
mod derive;
mod expand;
mod generics;
mod model;

use proc_macro2::TokenStream;
use syn::spanned::Spanned;

/// The id shared by the derive (which implements `Input<ID>` for an
/// `#[input]` field) and the impl attribute (which invalidates by it):
/// FNV-1a of the field name.
pub(crate) fn input_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(crate) fn attribute(args: TokenStream, item: TokenStream) -> TokenStream {
    let result = (|| {
        let args_error = (!args.is_empty())
            .then(|| syn::Error::new_spanned(&args, "`#[cached]` takes no arguments"));
        match syn::parse2::<syn::Item>(item.clone())? {
            syn::Item::Impl(item_impl) => {
                let (model, mut errors) = model::CachedImpl::parse(item_impl)?;
                errors.extend(args_error);
                let graph = check::Graph::build(&model, &mut errors);
                // Expand what is valid even when something is not, so the
                // rest of the crate type-checks and each mistake is one error.
                let mut tokens = TokenStream::new();
                for error in errors {
                    tokens.extend(error.into_compile_error());
                }
                tokens.extend(expand::cached_impl(&model, &graph)?);
                Ok(tokens)
            }
            syn::Item::Fn(func) => Err(syn::Error::new(
                func.sig.fn_token.span,
                "`#[cached]` goes on an `impl` block (and, inside it, on methods); a free fn cannot be cached",
            )),
            other => Err(syn::Error::new(
                other.span(),
                "`#[cached]` goes on an `impl` block whose type has `#[derive(Cached)]`",
            )),
        }
    })();
    crate::or_fallback(result, || model::strip_inert_attributes(item))
}

pub(crate) fn derive(input: TokenStream) -> TokenStream {
    derive::expand(input).unwrap_or_else(syn::Error::into_compile_error)
}
