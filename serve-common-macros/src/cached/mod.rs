//! `#[derive(Cached)]` and `#[cached] impl`: parse -> check -> expand.

mod check;
mod derive;
mod expand;
mod fields;
mod generics;
mod model;
mod reads;

use proc_macro2::TokenStream;
use syn::spanned::Spanned;

/// The id by which the derive's setter of an `#[input]` field tells the
/// impl's storage what to invalidate: FNV-1a of the field name.
pub(crate) fn input_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(crate) fn attribute(args: TokenStream, item: TokenStream) -> TokenStream {
    let result = (|| {
        let (runtime, args_error) = impl_args(args);
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
                tokens.extend(expand::cached_impl(&model, &graph, &runtime)?);
                Ok(tokens)
            }
            syn::Item::Fn(func) if func.sig.receiver().is_some() => {
                Ok(method_without_impl(&func.vis, &func.sig))
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

/// The impl block's `#[cached(crate = "path")]`, and the error of any
/// other argument (`result` goes on a method).
fn impl_args(args: TokenStream) -> (crate::Runtime, Option<syn::Error>) {
    let mut runtime = crate::Runtime::default();
    if args.is_empty() {
        return (runtime, None);
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            runtime = crate::Runtime::from_value(&meta.value()?.parse()?)?;
            Ok(())
        } else if meta.path.is_ident("result") {
            Err(meta.error(
                "`result` goes on a cached method (`#[cached(result)] fn f(&self) -> Result<..>`), not on the impl block",
            ))
        } else {
            Err(meta
                .error("unknown option of a `#[cached]` impl block; expected `crate = \"path\"`"))
        }
    });
    let error = syn::parse::Parser::parse2(parser, args).err();
    (runtime, error)
}

/// A `#[cached]` method in an impl block without `#[cached]`: one error,
/// and the method as it would have been (returning `&T`), so its callers
/// add none.
fn method_without_impl(vis: &syn::Visibility, sig: &syn::Signature) -> TokenStream {
    let error = syn::Error::new(
        sig.ident.span(),
        "`#[cached]` on a method works inside a `#[cached]` impl block: add `#[cached]` to the `impl` block too",
    )
    .into_compile_error();
    let mut sig = sig.clone();
    if let syn::ReturnType::Type(_, ty) = &mut sig.output {
        **ty = syn::parse_quote!(&#ty);
    }
    // The attributes of the method are left out: this is only what its
    // callers see.
    quote::quote! {
        #error
        #[allow(unused_variables, dead_code)]
        #vis #sig {
            ::core::unreachable!()
        }
    }
}

/// `#[dependency]` / `#[setter]` outside a `#[cached]` impl block (inside
/// one, the impl's macro reads and removes them): an error saying where
/// they go, or nothing when a `#[cached]` on the same method says it.
pub(crate) fn stray(name: &str, args: TokenStream, item: TokenStream) -> TokenStream {
    let _ = args;
    let Ok(func) = syn::parse2::<syn::ImplItemFn>(item.clone()) else {
        let error = syn::Error::new(
            proc_macro2::Span::call_site(),
            format!("`#[{name}]` goes on a method of a `#[cached]` impl block"),
        );
        let mut tokens = error.into_compile_error();
        tokens.extend(item);
        return tokens;
    };
    let cached_too = func
        .attrs
        .iter()
        .any(|attr| model::is_named(attr, "cached"));
    if cached_too {
        return item;
    }
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        format!(
            "`#[{name}]` works inside a `#[cached]` impl block: add `#[cached]` to the `impl` block"
        ),
    );
    let mut tokens = error.into_compile_error();
    tokens.extend(item);
    tokens
}

pub(crate) fn derive(input: TokenStream) -> TokenStream {
    derive::expand(input)
}

pub(crate) fn check_fields(input: TokenStream) -> TokenStream {
    fields::check(input)
}
