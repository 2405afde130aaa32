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

pub(crate) fn signature(func: &ItemFn) -> syn::Result<Signature> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[on_event] handlers cannot be generic: the payload type must be known",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "#[on_event] handlers cannot be variadic",
        ));
    }
    let mut out = Signature {
        takes_name: false,
        payload: None,
        asyncness: sig.asyncness,
    };
    for (index, arg) in sig.inputs.iter().enumerate() {
        let pat_type = match arg {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new(
                    receiver.span(),
                    "#[on_event] goes on a free fn, not a method",
                ));
            }
            FnArg::Typed(pat_type) => pat_type,
        };
        if index >= 2 {
            return Err(syn::Error::new_spanned(
                arg,
                "#[on_event] handlers take at most two parameters: the event name (`&str`) and the payload (`&T`)",
            ));
        }
        let Type::Reference(reference) = &*pat_type.ty else {
            return Err(syn::Error::new_spanned(
                &pat_type.ty,
                "take the event name as `&str` and the payload by reference, as `&T`",
            ));
        };
        if let Some(mutability) = &reference.mutability {
            return Err(syn::Error::new(
                mutability.span,
                "event parameters are shared references: remove `mut`",
            ));
        }
        let inner = &*reference.elem;
        if is_str(inner) {
            if index > 0 || out.payload.is_some() {
                return Err(syn::Error::new_spanned(
                    &pat_type.ty,
                    "the event name (`&str`) comes first; a payload of text is `&String`",
                ));
            }
            out.takes_name = true;
        } else if out.payload.is_some() {
            return Err(syn::Error::new_spanned(
                &pat_type.ty,
                "only one payload parameter is allowed",
            ));
        } else {
            out.payload = Some(inner.clone());
        }
    }
    Ok(out)
}
