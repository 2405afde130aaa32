//! `#[time_and_log("message {arg}", level = "debug")]`: parse, check, expand.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::{ParseStream, Parser};
use syn::{FnArg, ItemFn, LitStr, Pat, Token};

mod kw {
    syn::custom_keyword!(level);
}

struct Args {
    message: LitStr,
    level: proc_macro2::Ident,
}

fn parse_args(input: ParseStream<'_>) -> syn::Result<Args> {
    if input.is_empty() {
        return Err(input.error("expected a message: #[time_and_log(\"running f({x})\")]"));
    }
    let message = if input.peek(LitStr) {
        input.parse::<LitStr>()?
    } else {
        let expr: syn::Expr = input.parse()?;
        return Err(syn::Error::new_spanned(
            expr,
            "the message must be a string literal; it may name the function's arguments, as in \"running f({x})\"",
        ));
    };
    let mut level = None;
    while !input.is_empty() {
        input.parse::<Token![,]>()?;
        if input.is_empty() {
            break;
        }
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::level) {
            let token = input.parse::<kw::level>()?;
            if level.is_some() {
                return Err(syn::Error::new(token.span, "duplicate option `level`"));
            }
            input.parse::<Token![=]>()?;
            let value: LitStr = input.parse()?;
            let ident = match value.value().to_ascii_lowercase().as_str() {
                "trace" => "TRACE",
                "debug" => "DEBUG",
                "info" => "INFO",
                "warn" | "warning" => "WARN",
                "error" => "ERROR",
                _ => {
                    return Err(syn::Error::new(
                        value.span(),
                        "unknown level: expected \"trace\", \"debug\", \"info\", \"warn\" or \"error\"",
                    ));
                }
            };
            level = Some(proc_macro2::Ident::new(ident, value.span()));
        } else if input.peek(syn::Ident) {
            let ident: syn::Ident = input.parse()?;
            return Err(syn::Error::new(
                ident.span(),
                format!("unknown option `{ident}`; expected `level = \"...\"`"),
            ));
        } else {
            return Err(lookahead.error());
        }
    }
    Ok(Args {
        message,
        level: level
            .unwrap_or_else(|| proc_macro2::Ident::new("DEBUG", proc_macro2::Span::call_site())),
    })
}

/// The names a `{...}` in the message uses, checked against the arguments.
fn check_message(message: &LitStr, params: &[String]) -> syn::Result<()> {
    let text = message.value();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '{' => {
                let mut inside = String::new();
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                    inside.push(c);
                }
                let name = inside.split(':').next().unwrap_or_default().trim();
                if name.is_empty() || name.chars().all(|c| c.is_ascii_digit()) {
                    return Err(syn::Error::new(
                        message.span(),
                        "name the argument in the message, as in \"running f({x})\"; positional `{}` has nothing to refer to",
                    ));
                }
                if !params.iter().any(|p| p == name) {
                    return Err(syn::Error::new(
                        message.span(),
                        format!(
                            "the message names `{name}`, which is not an argument of this function (arguments: {})",
                            if params.is_empty() {
                                "none".to_owned()
                            } else {
                                params.join(", ")
                            }
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let result = (|| -> syn::Result<TokenStream> {
        let args = parse_args.parse2(args)?;
        let mut func: ItemFn = syn::parse2(item.clone())?;
        let params: Vec<String> = func
            .sig
            .inputs
            .iter()
            .filter_map(|arg| match arg {
                FnArg::Receiver(_) => Some("self".to_owned()),
                FnArg::Typed(t) => match &*t.pat {
                    Pat::Ident(ident) => Some(ident.ident.to_string()),
                    _ => None,
                },
            })
            .collect();
        check_message(&args.message, &params)?;
        let private = quote!(::serve_common::__private);
        let (message, level) = (&args.message, &args.level);
        let guard = quote_spanned! {message.span()=>
            let __serve_common_time_and_log = if #private::tracing::enabled!(#private::tracing::Level::#level) {
                #private::TimedCall::start(
                    ::std::format!(#message),
                    |message: &str, nanos: u128| {
                        #private::tracing::event!(#private::tracing::Level::#level, "{}: {} ns", message, nanos)
                    },
                )
            } else {
                #private::TimedCall::off()
            };
        };
        let body = &func.block;
        *func.block = syn::parse_quote!({
            #guard
            #body
        });
        Ok(quote!(#func))
    })();
    crate::or_fallback(result, || item)
}
