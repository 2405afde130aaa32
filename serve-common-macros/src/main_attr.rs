//! `#[serve_common::main(config = "...", ipc = false, logging = false)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::{ParseStream, Parser};
use syn::{ItemFn, LitBool, Token};

#[derive(Default)]
struct Options {
    config: Option<syn::Expr>,
    ipc: Option<LitBool>,
    logging: Option<LitBool>,
    runtime: Option<crate::Runtime>,
}

fn parse_options(input: ParseStream<'_>, errors: &mut Vec<syn::Error>) -> syn::Result<Options> {
    let mut options = Options::default();
    while !input.is_empty() {
        // `crate` is a keyword.
        let name: syn::Ident = input.call(syn::ext::IdentExt::parse_any)?;
        input
            .parse::<Token![=]>()
            .map_err(|e| syn::Error::new(e.span(), format!("expected `{name} = ...`")))?;
        match name.to_string().as_str() {
            "config" => {
                if options.config.is_some() {
                    errors.push(syn::Error::new(name.span(), "duplicate option `config`"));
                }
                let value: syn::Expr = input.parse()?;
                match value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(_),
                        ..
                    }) => options.config = Some(value),
                    syn::Expr::Macro(ref call)
                        if call.mac.path.is_ident("concat") || call.mac.path.is_ident("env") =>
                    {
                        options.config = Some(value)
                    }
                    other => {
                        errors.push(syn::Error::new_spanned(
                            other,
                            "`config` takes a string literal (or `concat!`/`env!`): the config file's path, as in `config = \"service.toml\"`",
                        ));
                    }
                }
            }
            "ipc" | "logging" => {
                let slot = if name == "ipc" {
                    &mut options.ipc
                } else {
                    &mut options.logging
                };
                if slot.is_some() {
                    errors.push(syn::Error::new(
                        name.span(),
                        format!("duplicate option `{name}`"),
                    ));
                }
                let value: syn::Expr = input.parse()?;
                match value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Bool(lit),
                        ..
                    }) => *slot = Some(lit),
                    other => {
                        errors.push(syn::Error::new_spanned(
                            other,
                            format!("`{name}` takes `true` or `false`"),
                        ));
                    }
                }
            }
            "crate" => {
                if options.runtime.is_some() {
                    errors.push(syn::Error::new(name.span(), "duplicate option `crate`"));
                }
                match crate::Runtime::from_value(&input.parse()?) {
                    Ok(runtime) => options.runtime = Some(runtime),
                    Err(error) => errors.push(error),
                }
            }
            other => {
                let hint = match other {
                    "config_path" | "path" | "file" => " (did you mean `config = \"...\"`?)",
                    "events" => " (events cross processes with `ipc`)",
                    _ => "",
                };
                errors.push(syn::Error::new(
                    name.span(),
                    format!(
                        "unknown option `{other}`; expected `config = \"path\"`, `ipc = false`, `logging = false` or `crate = \"path\"`{hint}"
                    ),
                ));
                let _: syn::Expr = input.parse()?;
            }
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(options)
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let result = (|| -> syn::Result<TokenStream> {
        // Syntax errors stop here; every other mistake of the options and
        // of the signature is reported, together.
        let mut errors = Vec::new();
        let options = (|input: ParseStream<'_>| parse_options(input, &mut errors)).parse2(args)?;
        let func: ItemFn = syn::parse2(item.clone())?;
        let sig = &func.sig;
        if sig.asyncness.is_none() {
            errors.push(syn::Error::new(
                sig.fn_token.span,
                "`#[serve_common::main]` goes on `async fn main()`: add `async`",
            ));
        }
        if !sig.inputs.is_empty() {
            errors.push(syn::Error::new_spanned(
                &sig.inputs,
                "`main` takes no parameters: read arguments with `std::env::args()`",
            ));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.push(syn::Error::new_spanned(
                &sig.generics,
                "`main` cannot be generic",
            ));
        }
        if sig.ident != "main" {
            errors.push(syn::Error::new_spanned(
                &sig.ident,
                "`#[serve_common::main]` goes on the program's `main` function",
            ));
        }
        if let Some(error) = crate::combine(errors) {
            return Err(error);
        }
        let config = match &options.config {
            Some(lit) => quote!(::core::option::Option::Some(#lit)),
            None => quote!(::core::option::Option::None),
        };
        let ipc = options.ipc.is_none_or(|b| b.value);
        let logging = options.logging.is_none_or(|b| b.value);
        let (attrs, vis, output, body) = (&func.attrs, &func.vis, &sig.output, &func.block);
        let asyncness = sig.asyncness.expect("checked above");
        let private = options.runtime.unwrap_or_default().private();
        let run = quote::quote_spanned! {asyncness.span=>
            #private::serve_common_main_needs_the_tokio_feature
        };
        Ok(quote! {
            #(#attrs)*
            #vis fn main() #output {
                #run(
                    #config,
                    #ipc,
                    #logging,
                    ::core::env!("CARGO_PKG_NAME"),
                    ::core::env!("CARGO_PKG_VERSION"),
                    || async move #body,
                )
            }
        })
    })();
    // On error, keep the body type-checked under another name, with an
    // empty `main`, so the one mistake is the one error.
    crate::or_fallback(result, || match syn::parse2::<ItemFn>(item.clone()) {
        Ok(mut func) => {
            func.sig.ident = syn::Ident::new("__serve_common_main_body", func.sig.ident.span());
            quote! {
                #[allow(dead_code)]
                #func
                fn main() {}
            }
        }
        Err(_) => item,
    })
}
