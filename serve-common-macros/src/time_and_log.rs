//! `#[time_and_log("message {arg}", level = "debug")]`: parse, check, expand.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::{ParseStream, Parser};
use syn::{ItemFn, LitStr, Token};

mod kw {
    syn::custom_keyword!(level);
}

struct Args {
    message: LitStr,
    level: proc_macro2::Ident,
    runtime: crate::Runtime,
}

fn parse_args(input: ParseStream<'_>, errors: &mut Vec<syn::Error>) -> syn::Result<Args> {
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
    let mut runtime = None;
    while !input.is_empty() {
        input.parse::<Token![,]>()?;
        if input.is_empty() {
            break;
        }
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::level) {
            let token = input.parse::<kw::level>()?;
            if level.is_some() {
                errors.push(syn::Error::new(token.span, "duplicate option `level`"));
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
                    errors.push(syn::Error::new(
                        value.span(),
                        "unknown level: expected \"trace\", \"debug\", \"info\", \"warn\" or \"error\"",
                    ));
                    continue;
                }
            };
            level = Some(proc_macro2::Ident::new(ident, value.span()));
        } else if lookahead.peek(Token![crate]) {
            let token = input.parse::<Token![crate]>()?;
            if runtime.is_some() {
                errors.push(syn::Error::new(token.span, "duplicate option `crate`"));
            }
            match crate::Runtime::parse_value(input) {
                Ok(path) => runtime = Some(path),
                Err(error) => errors.push(error),
            }
        } else if input.peek(syn::Ident) {
            let ident: syn::Ident = input.parse()?;
            errors.push(syn::Error::new(
                ident.span(),
                format!(
                    "unknown option `{ident}`; expected `level = \"...\"` or `crate = \"path\"`"
                ),
            ));
            // Its value, if any, goes with it.
            if input.parse::<Option<Token![=]>>()?.is_some() {
                let _: syn::Expr = input.parse()?;
            }
        } else {
            return Err(lookahead.error());
        }
    }
    Ok(Args {
        message,
        level: level
            .unwrap_or_else(|| proc_macro2::Ident::new("DEBUG", proc_macro2::Span::call_site())),
        runtime: runtime.unwrap_or_default(),
    })
}

/// The message without its escapes (`{{` -> `{`) if it has no
/// placeholder: then it is logged as it is, with nothing formatted or
/// allocated. A message with placeholders goes to `format!`, which checks
/// each one and reports a mistake on the placeholder itself.
fn plain_text(message: &LitStr) -> Option<String> {
    let text = message.value();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let result = (|| -> syn::Result<TokenStream> {
        let mut errors = Vec::new();
        let args = (|input: ParseStream<'_>| parse_args(input, &mut errors)).parse2(args)?;
        // A mistake in the options is reported with the expansion (at the
        // default level), so the message's own mistakes show too.
        let option_errors = crate::combine(errors).map(syn::Error::into_compile_error);
        let mut func: ItemFn = syn::parse2(item.clone())?;
        let (message, level) = (&args.message, &args.level);
        let (start, text) = match plain_text(message) {
            Some(text) => {
                let text = LitStr::new(&text, message.span());
                (quote!(start_static), quote!(#text))
            }
            None => (
                quote!(start),
                quote_spanned!(message.span()=> ::std::format!(#message)),
            ),
        };
        let private = args.runtime.private_at(message.span());
        let guard = quote_spanned! {message.span()=>
            let __serve_common_time_and_log = if #private::tracing::enabled!(#private::tracing::Level::#level) {
                #private::TimedCall::#start(
                    #text,
                    |message: &str, nanos: u128| {
                        #private::tracing::event!(#private::tracing::Level::#level, "{}: {} ns", message, nanos)
                    },
                )
            } else {
                #private::TimedCall::off()
            };
        };
        // The body's statements after the guard (not the body as a block:
        // a block as the tail would trip `unused_braces` in the user's
        // crate).
        let body = &func.block.stmts;
        *func.block = syn::parse_quote!({
            #guard
            #(#body)*
        });
        let mut out = option_errors.unwrap_or_default();
        out.extend(quote!(#func));
        Ok(out)
    })();
    crate::or_fallback(result, || item)
}
