//! `#[derive(Cached)]`: the cache slot, the setters of `#[input]` fields,
//! and the macro through which the `#[cached]` impl learns the fields.
//!
//! Every mistake is reported and the impls are emitted anyway (from what
//! could be read), so the `#[cached]` impl and the rest of the crate add
//! no errors of their own.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields};

use super::{generics, input_id};

/// `Cache<Self>` (or `Cache<Name<..>>`), by any path: another crate's
/// `Cache<K, V>` is not the slot.
fn is_cache_type(ty: &syn::Type, name: &syn::Ident) -> bool {
    let syn::Type::Path(p) = ty else {
        return false;
    };
    let Some(last) = p.path.segments.last() else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    last.ident == "Cache"
        && args.args.len() == 1
        && matches!(&args.args[0], syn::GenericArgument::Type(syn::Type::Path(arg))
            if arg.path.is_ident("Self") || arg.path.segments.last().is_some_and(|s| s.ident == *name))
}

/// An `#[input]` field and its setter's options.
struct Input<'a> {
    field: &'a syn::Field,
    /// `#[input(pub)]`, `#[input(pub(crate))]`: the setter's visibility
    /// (default: the field's).
    vis: Option<syn::Visibility>,
    /// `#[input(setter = name)]` (default: `set_<field>`).
    setter: Option<syn::Ident>,
}

/// Reads `#[input]` / `#[input(pub, setter = name)]`.
fn parse_input<'a>(
    field: &'a syn::Field,
    attr: &syn::Attribute,
    errors: &mut Vec<syn::Error>,
) -> Input<'a> {
    let mut input = Input {
        field,
        vis: None,
        setter: None,
    };
    if let syn::Meta::Path(_) = attr.meta {
        return input;
    }
    let result = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("pub") {
            if input.vis.is_some() {
                return Err(meta.error("the setter's visibility is given twice"));
            }
            // `pub` or `pub(crate)` / `pub(super)` / `pub(in path)`.
            let tokens = if meta.input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in meta.input);
                let inner: TokenStream = content.parse()?;
                quote!(pub(#inner))
            } else {
                quote!(pub)
            };
            input.vis = Some(syn::parse2(tokens)?);
            Ok(())
        } else if meta.path.is_ident("setter") {
            if input.setter.is_some() {
                return Err(meta.error("the setter's name is given twice"));
            }
            input.setter = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error(
                "unknown `#[input]` option; expected `pub`, `pub(crate)` or `setter = name`",
            ))
        }
    });
    if let Err(error) = result {
        errors.push(error);
    }
    input
}

/// The struct's `#[cache(crate = "path")]`: the runtime's path.
fn container_options(attrs: &[syn::Attribute], errors: &mut Vec<syn::Error>) -> crate::Runtime {
    let mut runtime = crate::Runtime::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("cache")) {
        if let syn::Meta::Path(_) = attr.meta {
            errors.push(syn::Error::new_spanned(
                attr,
                "`#[cache]` marks the cache slot, a field; on the struct it takes `crate = \"path\"`",
            ));
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                runtime = crate::Runtime::from_value(&meta.value()?.parse()?)?;
                Ok(())
            } else {
                Err(meta.error(
                    "unknown option of `#[cache]` on the struct; expected `crate = \"path\"`",
                ))
            }
        });
        errors.extend(result.err());
    }
    runtime
}

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let mut errors: Vec<syn::Error> = Vec::new();
    let runtime = container_options(&input.attrs, &mut errors);
    let private = runtime.private();
    let empty = syn::punctuated::Punctuated::new();
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => &named.named,
            other => {
                errors.push(syn::Error::new(
                    other.span(),
                    "`#[derive(Cached)]` needs a struct with named fields",
                ));
                &empty
            }
        },
        Data::Enum(e) => {
            errors.push(syn::Error::new(
                e.enum_token.span,
                "`#[derive(Cached)]` needs a struct with named fields, not an enum",
            ));
            &empty
        }
        Data::Union(u) => {
            errors.push(syn::Error::new(
                u.union_token.span,
                "`#[derive(Cached)]` needs a struct with named fields, not a union",
            ));
            &empty
        }
    };
    let shape_ok = errors.is_empty();
    let mut cache_field = None;
    let mut marked = None;
    let mut inputs: Vec<Input<'_>> = Vec::new();
    for field in fields {
        for attr in &field.attrs {
            if attr.path().is_ident("cache") {
                if let Err(e) = attr.meta.require_path_only() {
                    errors.push(syn::Error::new(e.span(), "`#[cache]` takes no arguments"));
                }
                if marked.is_some() {
                    errors.push(syn::Error::new_spanned(
                        attr,
                        "only one field can be the `#[cache]`",
                    ));
                } else {
                    marked = Some(field);
                }
            }
            if attr.path().is_ident("input") {
                if inputs.iter().any(|i| std::ptr::eq(i.field, field)) {
                    errors.push(syn::Error::new_spanned(attr, "one `#[input]` per field"));
                } else {
                    inputs.push(parse_input(field, attr, &mut errors));
                }
            }
        }
        if cache_field.is_none() && is_cache_type(&field.ty, &input.ident) {
            cache_field = Some(field);
        }
    }
    let cache = marked.or(cache_field);
    if cache.is_none() && shape_ok {
        errors.push(syn::Error::new(
            input.ident.span(),
            "`#[derive(Cached)]` needs a cache slot: add a field `cache: serve_common::cached::Cache<Self>` (or mark one `#[cache]`)",
        ));
    }
    if let Some(cache) = cache {
        if let Some(clash) = inputs.iter().find(|i| i.field.ident == cache.ident) {
            errors.push(syn::Error::new_spanned(
                &clash.field.ident,
                "the cache slot cannot be an `#[input]`",
            ));
        }
        inputs.retain(|i| i.field.ident != cache.ident);
    }

    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let key = generics::key_ident(name);
    let unbounded = generics::unbounded(&input.generics);
    let (key_decl, key_args) = (&unbounded.decl, &unbounded.args);
    let key_struct = match &unbounded.marker {
        Some(marker) => quote!(pub struct #key #key_decl(#marker);),
        None => quote!(pub struct #key;),
    };
    let key_ty = quote!(#key #key_args);
    // Spanned on the cache field's type: without a `#[cached]` impl, every
    // error lands there with the same text, and the compiler shows it once.
    let cache_span = cache.map_or_else(|| name.span(), |c| c.ty.span());
    let slots = generics::slots_ident(name);
    let slots_ty = quote!(#slots #key_args);
    // Without a slot (already an error), the accessors are never run.
    let (slots_ref, slots_mut) = match cache.and_then(|c| c.ident.as_ref()) {
        Some(ident) => (
            quote!(#runtime::cached::Cache::__slots(&owner.#ident)),
            quote!(#runtime::cached::Cache::__slots_mut(&mut owner.#ident)),
        ),
        None => (
            quote!({
                let _ = owner;
                ::core::unreachable!()
            }),
            quote!({
                let _ = owner;
                ::core::unreachable!()
            }),
        ),
    };
    let private_at_cache = runtime.private_at(cache_span);
    let has_cache = quote_spanned! {cache_span=>
        #[automatically_derived]
        impl #impl_generics #private_at_cache::HasCache for #name #ty_generics #where_clause {
            type Key = #key_ty;
        }

        // The slots type comes from the `#[cached]` impl: without one, this
        // is the single error, naming it `__<Struct>_needs_cached_impl`.
        #[automatically_derived]
        impl #key_decl #private_at_cache::CacheSlots for #key_ty {
            type Slots = #slots_ty;

            #[inline]
            fn __invalidate_input(slots: &mut Self::Slots, input: u64) {
                <#slots_ty>::__serve_common_invalidate_input(slots, input);
            }
        }

        #[automatically_derived]
        impl #impl_generics #private_at_cache::CacheAccess<#name #ty_generics> for #key_ty #where_clause {
            #[inline(always)]
            #[allow(clippy::inline_always)]
            fn __slots<'__serve_common_owner>(
                owner: &'__serve_common_owner #name #ty_generics,
            ) -> &'__serve_common_owner #slots_ty {
                #slots_ref
            }

            #[inline(always)]
            #[allow(clippy::inline_always)]
            fn __slots_mut<'__serve_common_owner>(
                owner: &'__serve_common_owner mut #name #ty_generics,
            ) -> &'__serve_common_owner mut #slots_ty {
                #slots_mut
            }
        }
    };
    let setters = inputs.iter().map(|input| {
        let field = input.field;
        let ident = field.ident.as_ref().expect("named");
        let ty = &field.ty;
        let vis = input.vis.as_ref().unwrap_or(&field.vis);
        let setter = input
            .setter
            .clone()
            .unwrap_or_else(|| format_ident!("set_{}", ident));
        let id = input_id(&ident.to_string());
        let doc = format!(
            "Sets `{ident}` and invalidates every cached property that depends on it (assigning the field directly would not)."
        );
        let invalidate = quote_spanned! {cache_span=>
            #private_at_cache::invalidate_input::<Self>(self, #id);
        };
        quote! {
            #[doc = #doc]
            #[inline]
            #[allow(dead_code)]
            #vis fn #setter(&mut self, value: #ty) {
                self.#ident = value;
                #invalidate
            }
        }
    });
    // The fields, for the `#[cached]` impl's checks: it calls this macro
    // (named like the key, so a missing derive is one "cannot find" error
    // that says what to add).
    let field_names = fields.iter().filter_map(|f| f.ident.as_ref());
    let input_names = inputs.iter().filter_map(|i| i.field.ident.as_ref());
    let channel = generics::channel_ident(name);
    let guard = generics::guard_ident(name);
    let guard_base = format_ident!("{}_first", guard);
    let tokens = quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #key_struct

        #has_cache

        #[automatically_derived]
        impl #impl_generics #name #ty_generics #where_clause {
            #(#setters)*
        }

        #[doc(hidden)]
        #[allow(unused_macros)]
        macro_rules! #channel {
            (slots [$($args:tt)*] $owner:tt) => {
                #private::slots::<#key $($args)*, _>($owner)
            };
            (slots_mut [$($args:tt)*] $owner:tt) => {
                #private::slots_mut::<#key $($args)*, _>($owner)
            };
            (guard $guard:ident $($rest:tt)*) => {
                $guard! { $($rest)* }
            };
            (check $($rest:tt)*) => {
                #private::cached_check! {
                    struct #name
                    fields [#(#field_names)*]
                    inputs [#(#input_names)*]
                    $($rest)*
                }
            };
        }
        #[allow(unused_imports)]
        use #channel;

        // What the first `#[cached]` impl block of the struct finds (by
        // path): its expansion goes through. See the block's own definition.
        #[doc(hidden)]
        #[allow(unused_macros)]
        macro_rules! #guard_base {
            (first { $($first:tt)* } later { $($later:tt)* }) => { $($first)* };
        }
        #[allow(unused_imports)]
        use #guard_base as #guard;
    };
    let mut out = TokenStream::new();
    for error in errors {
        out.extend(error.into_compile_error());
    }
    out.extend(tokens);
    out
}
