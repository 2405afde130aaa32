//! Generic parameters without their bounds: the key and slots types carry
//! the parameters but must be well-formed for any arguments.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{GenericArgument, GenericParam, Generics, PathArguments, Type};

pub(crate) struct Unbounded {
    /// `<T, 'a, const N: usize>` or nothing.
    pub(crate) decl: TokenStream,
    /// `<T, 'a, N>` or nothing.
    pub(crate) args: TokenStream,
    /// A `PhantomData` field type that uses every type and lifetime
    /// parameter, if there is any.
    pub(crate) marker: Option<TokenStream>,
}

enum Param {
    Lifetime(syn::Lifetime),
    Type(syn::Ident),
    Const(syn::Ident, Box<Type>),
}

fn render(params: &[Param]) -> Unbounded {
    let mut decl = Vec::new();
    let mut args = Vec::new();
    let mut used = Vec::new();
    for param in params {
        match param {
            Param::Lifetime(lifetime) => {
                decl.push(quote!(#lifetime));
                args.push(quote!(#lifetime));
                used.push(quote!(&#lifetime ()));
            }
            Param::Type(ident) => {
                decl.push(quote!(#ident));
                args.push(quote!(#ident));
                used.push(quote!(#ident));
            }
            Param::Const(ident, ty) => {
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

/// A type's own parameters, without bounds or defaults.
pub(crate) fn unbounded(generics: &Generics) -> Unbounded {
    let params: Vec<Param> = generics
        .params
        .iter()
        .map(|param| match param {
            GenericParam::Type(t) => Param::Type(t.ident.clone()),
            GenericParam::Lifetime(l) => Param::Lifetime(l.lifetime.clone()),
            GenericParam::Const(c) => Param::Const(c.ident.clone(), Box::new(c.ty.clone())),
        })
        .collect();
    render(&params)
}

/// The key type's name for a struct named `name`.
pub(crate) fn key_ident(name: &syn::Ident) -> syn::Ident {
    format_ident!("__{}_cached_key", name)
}

/// The name of the macro through which the derive tells the `#[cached]`
/// impl its key and its fields: shown by the compiler when the derive is
/// missing, so it says what to do.
pub(crate) fn channel_ident(name: &syn::Ident) -> syn::Ident {
    format_ident!("__{}_needs_derive_Cached", name)
}

/// The name of the macro through which a `#[cached]` impl block finds out
/// whether it is the struct's first: the derive defines it (the block
/// expands), and each block redefines it after itself (a later block
/// expands to stubs). A second block is then one compiler error naming
/// this macro, so the name states the rule.
pub(crate) fn guard_ident(name: &syn::Ident) -> syn::Ident {
    format_ident!("__{}_allows_one_cached_impl_block", name)
}

/// The slots type's name for a struct named `name`: shown by the compiler
/// when the `#[cached]` impl is missing.
pub(crate) fn slots_ident(name: &syn::Ident) -> syn::Ident {
    format_ident!("__{}_needs_cached_impl", name)
}

/// The slots type's parameters, read off the impl's self type `S<args>`:
/// one per argument, in order, so that the derive can name it `L<struct
/// params>`. An argument that is one of the impl's parameters keeps its
/// name (the properties' types may use it); any other gets a fresh one.
pub(crate) fn from_self_args(item: &syn::ItemImpl) -> syn::Result<Unbounded> {
    let Type::Path(path) = &*item.self_ty else {
        return Err(syn::Error::new_spanned(
            &item.self_ty,
            "`#[cached]` goes on an impl of a struct with `#[derive(Cached)]`",
        ));
    };
    let last = path.path.segments.last().expect("a path has a segment");
    let args: Vec<&GenericArgument> = match &last.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().collect(),
        PathArguments::None => Vec::new(),
        PathArguments::Parenthesized(p) => {
            return Err(syn::Error::new_spanned(
                p,
                "`#[cached]` goes on an impl of a struct",
            ));
        }
    };
    let mut params: Vec<Param> = Vec::new();
    let taken = |params: &[Param], name: &str| {
        params.iter().any(|p| match p {
            Param::Lifetime(l) => l.ident == name,
            Param::Type(i) | Param::Const(i, _) => i == name,
        })
    };
    for (i, arg) in args.into_iter().enumerate() {
        match arg {
            GenericArgument::Lifetime(l) => {
                let fresh =
                    l.ident == "_" || l.ident == "static" || taken(&params, &l.ident.to_string());
                params.push(Param::Lifetime(if fresh {
                    syn::Lifetime::new(&format!("'__serve_common_p{i}"), l.span())
                } else {
                    l.clone()
                }));
            }
            GenericArgument::Type(ty) => {
                let own = match ty {
                    Type::Path(p) if p.qself.is_none() => p.path.get_ident().and_then(|ident| {
                        item.generics.params.iter().find_map(|param| match param {
                            GenericParam::Type(t) if t.ident == *ident => {
                                Some(Param::Type(ident.clone()))
                            }
                            GenericParam::Const(c) if c.ident == *ident => {
                                Some(Param::Const(ident.clone(), Box::new(c.ty.clone())))
                            }
                            _ => None,
                        })
                    }),
                    _ => None,
                };
                match own {
                    Some(Param::Type(ident) | Param::Const(ident, _))
                        if taken(&params, &ident.to_string()) =>
                    {
                        params.push(Param::Type(format_ident!("__ServeCommonP{}", i)));
                    }
                    Some(param) => params.push(param),
                    None => params.push(Param::Type(format_ident!("__ServeCommonP{}", i))),
                }
            }
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "`#[cached]` supports impls whose const arguments are the impl's own parameters (`impl<const N: usize> S<N>`)",
                ));
            }
        }
    }
    Ok(render(&params))
}
