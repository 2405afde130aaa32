//! Generic parameters without their bounds: the key and slots types carry
//! the parameters but must be well-formed for any arguments.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{GenericParam, Generics};

pub(crate) struct Unbounded {
    /// `<T, 'a, const N: usize>` or nothing.
    pub(crate) decl: TokenStream,
    /// `<T, 'a, N>` or nothing.
    pub(crate) args: TokenStream,
    /// A `PhantomData` field type that uses every type and lifetime
    /// parameter, if there is any.
    pub(crate) marker: Option<TokenStream>,
}

pub(crate) fn unbounded(generics: &Generics) -> Unbounded {
    let mut decl = Vec::new();
    let mut args = Vec::new();
    let mut used = Vec::new();
    for param in &generics.params {
        match param {
            GenericParam::Type(t) => {
                let ident = &t.ident;
                decl.push(quote!(#ident));
                args.push(quote!(#ident));
                used.push(quote!(#ident));
            }
            GenericParam::Lifetime(l) => {
                let lifetime = &l.lifetime;
                decl.push(quote!(#lifetime));
                args.push(quote!(#lifetime));
                used.push(quote!(&#lifetime ()));
            }
            GenericParam::Const(c) => {
                let (ident, ty) = (&c.ident, &c.ty);
                decl.push(quote!(const #ident: #ty));
                args.push(quote!(#ident));
            }
        }
    }
    let wrap = |items: &[TokenStream]| {
        if items.is_empty() {
            quote!()
        } else {
            quote!(<#(#items),*>)
        }
    };
    Unbounded {
        decl: wrap(&decl),
        args: wrap(&args),
        marker: (!used.is_empty())
            .then(|| quote!(::core::marker::PhantomData<fn() -> (#(#used,)*)>)),
    }
}

/// The key type's name for a struct named `name`: shown by the compiler
/// when the derive is missing, so it says what to do.
pub(crate) fn key_ident(name: &syn::Ident) -> syn::Ident {
    format_ident!("__{}_needs_derive_Cached", name)
}
