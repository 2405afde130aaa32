use proc_macro2::TokenStream;
use syn::parse::{ParseStream, Parser};
use syn::{LitStr, Token};

mod kw {
    syn::custom_keyword!(once);
    syn::custom_keyword!(ack);
    syn::custom_keyword!(supervisor);
    syn::custom_keyword!(one_per_service);
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
    pub(crate) supervisor: bool,
    pub(crate) one_per_service: bool,
    /// `crate = "path"`: the runtime's path (default `::serve_common`).
    pub(crate) runtime: crate::Runtime,
}

impl Args {
    /// The arguments, and every mistake in them (each its own error, so
    /// several are reported at once); `Err` for a syntax error.
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<(Self, Vec<syn::Error>)> {
        let mut errors = Vec::new();
        let args =
            (|input: ParseStream<'_>| Self::parse_stream(input, &mut errors)).parse2(tokens)?;
        Ok((args, errors))
    }

    fn parse_stream(input: ParseStream<'_>, errors: &mut Vec<syn::Error>) -> syn::Result<Self> {
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
            errors.push(syn::Error::new(pattern.span(), message));
        }
        let mut args = Self {
            pattern,
            once: false,
            ack: Ack::None,
            supervisor: false,
            one_per_service: false,
            runtime: crate::Runtime::default(),
        };
        let (mut seen_once, mut seen_ack, mut seen_supervisor) = (false, false, false);
        let mut once_span = None;
        let mut one_per_service_span = None;
        let mut crate_span = None;
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::once) {
                let token = input.parse::<kw::once>()?;
                if std::mem::replace(&mut seen_once, true) {
                    errors.push(syn::Error::new(token.span, "duplicate option `once`"));
                }
                once_span = Some(token.span);
                args.once = true;
            } else if lookahead.peek(kw::ack) {
                let token = input.parse::<kw::ack>()?;
                if std::mem::replace(&mut seen_ack, true) {
                    errors.push(syn::Error::new(token.span, "duplicate option `ack`"));
                }
                args.ack = if input.peek(Token![=]) {
                    input.parse::<Token![=]>()?;
                    let name: LitStr = input.parse()?;
                    if name.value().is_empty() {
                        errors.push(syn::Error::new(
                            name.span(),
                            "the acknowledgement name is empty",
                        ));
                    }
                    Ack::Named(name)
                } else {
                    Ack::Completed
                };
            } else if lookahead.peek(kw::supervisor) {
                let token = input.parse::<kw::supervisor>()?;
                if std::mem::replace(&mut seen_supervisor, true) {
                    errors.push(syn::Error::new(token.span, "duplicate option `supervisor`"));
                }
                errors.extend(no_value(
                    input,
                    "`supervisor` takes no value: write `supervisor` to run the handler in the supervisor process too, or leave it out",
                )?);
                args.supervisor = true;
            } else if lookahead.peek(kw::one_per_service) {
                let token = input.parse::<kw::one_per_service>()?;
                if one_per_service_span.replace(token.span).is_some() {
                    errors.push(syn::Error::new(
                        token.span,
                        "duplicate option `one_per_service`",
                    ));
                }
                errors.extend(no_value(
                    input,
                    "`one_per_service` takes no value: write `one_per_service` to run the handler in one process of the service per event, or leave it out",
                )?);
                args.one_per_service = true;
            } else if lookahead.peek(Token![crate]) {
                let token = input.parse::<Token![crate]>()?;
                if crate_span.replace(token.span).is_some() {
                    errors.push(syn::Error::new(token.span, "duplicate option `crate`"));
                }
                match crate::Runtime::parse_value(input) {
                    Ok(runtime) => args.runtime = runtime,
                    Err(error) => {
                        errors.push(error);
                        skip_to_comma(input)?;
                    }
                }
            } else if input.peek(syn::Ident) {
                let ident: syn::Ident = input.parse()?;
                errors.push(syn::Error::new(
                    ident.span(),
                    format!(
                        "unknown option `{ident}`; expected `once`, `ack`, `ack = \"name\"`, `supervisor`, `one_per_service` or `crate = \"path\"`"
                    ),
                ));
                // Its value, if any, goes with it.
                skip_to_comma(input)?;
            } else {
                return Err(lookahead.error());
            }
        }
        if let (Some(_), Some(span)) = (once_span, one_per_service_span) {
            errors.push(syn::Error::new(
                span,
                "`once` and `one_per_service` cannot be combined: `once` unregisters the handler in the process that ran it, while the others keep theirs; register it with `EventBus::on(..).once()` in one process instead",
            ));
        }
        Ok(args)
    }
}

/// The tokens up to the next `,` (not included).
fn skip_to_comma(input: ParseStream<'_>) -> syn::Result<TokenStream> {
    input.step(|cursor| {
        let mut rest = *cursor;
        let mut tokens = TokenStream::new();
        while let Some((tt, next)) = rest.token_tree() {
            if matches!(&tt, proc_macro2::TokenTree::Punct(p) if p.as_char() == ',') {
                break;
            }
            tokens.extend([tt]);
            rest = next;
        }
        Ok((tokens, rest))
    })
}

/// A value after a flag option (`flag = x`, `flag(x)`) is an error,
/// spanned on the value (which is skipped).
fn no_value(input: ParseStream<'_>, message: &str) -> syn::Result<Option<syn::Error>> {
    if !(input.peek(Token![=]) || input.peek(syn::token::Paren)) {
        return Ok(None);
    }
    let value = skip_to_comma(input)?;
    Ok(Some(syn::Error::new_spanned(value, message)))
}
