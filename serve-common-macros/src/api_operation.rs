//! `#[api_operation]`: apistos' attribute, with the handler's function name
//! as the operation id unless one is given.

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Meta, Token};

use crate::{Runtime, or_fallback};

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    or_fallback(try_expand(args, item.clone()), || item)
}

fn try_expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let function: syn::ItemFn = syn::parse2(item.clone()).map_err(|_| {
        let first = item.clone().into_iter().next();
        syn::Error::new(
            first.map_or_else(proc_macro2::Span::call_site, |token| token.span()),
            "`#[api_operation]` goes on a handler function (`async fn name(..) -> ..`)",
        )
    })?;
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    let mut runtime = Runtime::default();
    let mut named = false;
    let mut kept: Vec<Meta> = Vec::with_capacity(metas.len() + 1);
    for meta in metas {
        if meta.path().is_ident("crate") {
            let Meta::NameValue(value) = &meta else {
                return Err(syn::Error::new_spanned(
                    &meta,
                    "`crate` takes the path of serve-common as a string, as in `crate = \"::sc\"`",
                ));
            };
            runtime = Runtime::from_value(&value.value)?;
            continue;
        }
        if meta.path().is_ident("operation_id") {
            named = true;
        }
        kept.push(meta);
    }
    if !named {
        // `r#type` is named `type`.
        let name = syn::ext::IdentExt::unraw(&function.sig.ident).to_string();
        kept.push(syn::parse_quote!(operation_id = #name));
    }
    let private = runtime.private();
    Ok(quote! {
        #[#private::apistos::api_operation(#(#kept),*)]
        #function
    })
}
