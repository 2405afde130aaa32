use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Type};

/// What the handler takes, in order: the event name, the payload's type.
pub(crate) struct Signature {
    pub(crate) takes_name: bool,
    pub(crate) payload: Option<Type>,
    /// `async fn`: its future runs on the bus's runtime.
    pub(crate) asyncness: Option<syn::Token![async]>,
}

fn is_str(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("str"))
}

/// What the handler takes, and every mistake in its signature (each its
/// own error).
pub(crate) fn signature(func: &ItemFn) -> (Signature, Vec<syn::Error>) {
    let mut errors = Vec::new();
    let out = read(func, &mut errors);
    (out, errors)
}

fn read(func: &ItemFn, errors: &mut Vec<syn::Error>) -> Signature {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "#[on_event] handlers cannot be generic: the payload type must be known",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "#[on_event] handlers cannot be variadic",
        ));
    }
    let mut out = Signature {
        takes_name: false,
        payload: None,
        asyncness: sig.asyncness,
    };
    // The position among the handler's own parameters (a receiver is
    // already an error, and does not shift them).
    let mut index = 0;
    for arg in &sig.inputs {
        let mut fail = |error: syn::Error| errors.push(error);
        let pat_type = match arg {
            FnArg::Receiver(receiver) => {
                fail(syn::Error::new(
                    receiver.span(),
                    "#[on_event] goes on a free fn, not a method",
                ));
                continue;
            }
            FnArg::Typed(pat_type) => pat_type,
        };
        index += 1;
        let index = index - 1;
        if index >= 2 {
            fail(syn::Error::new_spanned(
                arg,
                "#[on_event] handlers take at most two parameters: the event name (`&str`) and the payload (`&T`)",
            ));
            continue;
        }
        let Type::Reference(reference) = &*pat_type.ty else {
            fail(syn::Error::new_spanned(
                &pat_type.ty,
                "take the event name as `&str` and the payload by reference, as `&T`",
            ));
            continue;
        };
        if let Some(mutability) = &reference.mutability {
            fail(syn::Error::new(
                mutability.span,
                "event parameters are shared references: remove `mut`",
            ));
        }
        let inner = &*reference.elem;
        if is_str(inner) {
            if index > 0 || out.payload.is_some() {
                fail(syn::Error::new_spanned(
                    &pat_type.ty,
                    "the event name (`&str`) comes first; a payload of text is `&String`",
                ));
                continue;
            }
            out.takes_name = true;
        } else if out.payload.is_some() {
            fail(syn::Error::new_spanned(
                &pat_type.ty,
                "only one payload parameter is allowed",
            ));
        } else {
            out.payload = Some(inner.clone());
        }
    }
    out
}
