use proc_macro2::TokenStream;
use syn::parse::{ParseStream, Parser};
use syn::{LitStr, Token};

mod kw {
    syn::custom_keyword!(once);
    syn::custom_keyword!(ack);
}

pub(crate) enum Ack {
    None,
    Completed,
    Named(LitStr),
}

pub(crate) struct Args {
    pub(crate) pattern: LitStr,
    pub(crate) once: bool,
    pub(crate) ack: Ack,
}

impl Args {
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Self> {
        Self::parse_stream.parse2(tokens)
    }

    fn parse_stream(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(input.error(
                "expected an event pattern: #[on_event(\"name\")], #[on_event(\"config:*\")] or #[on_event(\"re:job\\\\.\\\\d+\")]",
            ));
        }
        let pattern = if input.peek(LitStr) {
            input.parse::<LitStr>()?
        } else {
            let expr: syn::Expr = input.parse()?;
            return Err(syn::Error::new_spanned(
                expr,
                "the event pattern must be a string literal, so it can be checked at compile time",
            ));
        };
        if let Err(message) = crate::pattern::validate(&pattern.value()) {
            return Err(syn::Error::new(pattern.span(), message));
        }
        let mut args = Self {
            pattern,
            once: false,
            ack: Ack::None,
        };
        let (mut seen_once, mut seen_ack) = (false, false);
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::once) {
                let token = input.parse::<kw::once>()?;
                if std::mem::replace(&mut seen_once, true) {
                    return Err(syn::Error::new(token.span, "duplicate option `once`"));
                }
                args.once = true;
            } else if lookahead.peek(kw::ack) {
                let token = input.parse::<kw::ack>()?;
                if std::mem::replace(&mut seen_ack, true) {
                    return Err(syn::Error::new(token.span, "duplicate option `ack`"));
                }
                args.ack = if input.peek(Token![=]) {
                    input.parse::<Token![=]>()?;
                    let name: LitStr = input.parse()?;
                    if name.value().is_empty() {
                        return Err(syn::Error::new(
                            name.span(),
                            "the acknowledgement name is empty",
                        ));
                    }
                    Ack::Named(name)
                } else {
                    Ack::Completed
                };
            } else {
                let mut error = lookahead.error();
                if input.peek(syn::Ident) {
                    let ident: syn::Ident = input.parse()?;
                    error = syn::Error::new(
                        ident.span(),
                        format!(
                            "unknown option `{ident}`; expected `once`, `ack` or `ack = \"name\"`"
                        ),
                    );
                }
                return Err(error);
            }
        }
        Ok(args)
    }
}
