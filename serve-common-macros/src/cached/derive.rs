//! `#[derive(Cached)]`: the cache slot and the setters of `#[input]` fields.

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

pub(crate) fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    let private = quote!(::serve_common::__private);
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => &named.named,
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "`#[derive(Cached)]` needs a struct with named fields",
                ));
            }
        },
        Data::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span,
                "`#[derive(Cached)]` needs a struct with named fields, not an enum",
            ));
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "`#[derive(Cached)]` needs a struct with named fields, not a union",
            ));
        }
    };
    let mut errors: Vec<syn::Error> = Vec::new();
    let mut cache_field = None;
    let mut marked = None;
    let mut inputs = Vec::new();
    for field in fields {
        for attr in &field.attrs {
            let ours = attr.path().is_ident("cache") || attr.path().is_ident("input");
            if let (true, Err(e)) = (ours, attr.meta.require_path_only()) {
                let name = attr
                    .path()
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                errors.push(syn::Error::new(
                    e.span(),
                    format!("`#[{name}]` takes no arguments"),
                ));
            }
            if attr.path().is_ident("cache") {
                if marked.is_some() {
                    errors.push(syn::Error::new_spanned(
                        attr,
                        "only one field can be the `#[cache]`",
                    ));
                }
                marked = Some(field);
            }
            if attr.path().is_ident("input") {
                inputs.push(field);
            }
        }
        if cache_field.is_none() && is_cache_type(&field.ty, &input.ident) {
            cache_field = Some(field);
        }
    }
    let Some(cache) = marked.or(cache_field) else {
        return Err(syn::Error::new(
            input.ident.span(),
            "`#[derive(Cached)]` needs a cache slot: add a field `cache: serve_common::cached::Cache<Self>` (or mark one `#[cache]`)",
        ));
    };
    if let Some(clash) = inputs.iter().find(|f| f.ident == cache.ident) {
        errors.push(syn::Error::new_spanned(
            &clash.ident,
            "the cache slot cannot be an `#[input]`",
        ));
    }
    if let Some(mut first) = errors.pop() {
        for error in errors.into_iter().rev() {
            let mut combined = error;
            combined.combine(first);
            first = combined;
        }
        return Err(first);
    }

    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let cache_ident = &cache.ident;
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
    let cache_span = cache.ty.span();
    let slots = generics::slots_ident(name);
    let slots_ty = quote!(#slots #key_args);
    let has_cache = quote_spanned! {cache_span=>
        impl #impl_generics #private::HasCache for #name #ty_generics #where_clause {
            type Key = #key_ty;
        }

        // The slots type comes from the `#[cached]` impl: without one, this
        // is the single error, naming it `__<Struct>_needs_cached_impl`.
        impl #key_decl #private::CacheSlots for #key_ty {
            type Slots = #slots_ty;

            #[inline]
            fn __invalidate_input(slots: &mut Self::Slots, input: u64) {
                <#slots_ty>::__serve_common_invalidate_input(slots, input);
            }
        }

        impl #impl_generics #private::CacheAccess<#name #ty_generics> for #key_ty #where_clause {
            #[inline(always)]
            fn __slots<'__serve_common_owner>(
                owner: &'__serve_common_owner #name #ty_generics,
            ) -> &'__serve_common_owner #slots_ty {
                ::serve_common::cached::Cache::__slots(&owner.#cache_ident)
            }

            #[inline(always)]
            fn __slots_mut<'__serve_common_owner>(
                owner: &'__serve_common_owner mut #name #ty_generics,
            ) -> &'__serve_common_owner mut #slots_ty {
                ::serve_common::cached::Cache::__slots_mut(&mut owner.#cache_ident)
            }
        }
    };
    let setters = inputs.iter().map(|field| {
        let ident = field.ident.as_ref().expect("named");
        let (vis, ty) = (&field.vis, &field.ty);
        let setter = format_ident!("set_{}", ident);
        let id = input_id(&ident.to_string());
        let doc = format!(
            "Sets `{ident}` and invalidates every cached property that depends on it (assigning the field directly would not)."
        );
        let invalidate = quote_spanned! {cache_span=>
            #private::invalidate_input::<Self>(self, #id);
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
    let input_impls = inputs.iter().map(|field| {
        let id = input_id(&field.ident.as_ref().expect("named").to_string());
        quote!(impl #impl_generics #private::Input<#id> for #name #ty_generics #where_clause {})
    });
    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #key_struct

        #has_cache
        #(#input_impls)*
        impl #impl_generics #name #ty_generics #where_clause {
            #(#setters)*
        }
    })
}
