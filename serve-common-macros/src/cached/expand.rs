//! Code generation for `#[cached] impl`.

use proc_macro2::{TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ImplItem, Type};

use super::check::Graph;
use super::model::CachedImpl;
use super::{generics, input_id};

/// Replaces `Self` in a return type by the impl's type: the slots struct
/// lives outside the impl.
fn replace_self(tokens: TokenStream, self_ty: &Type) -> TokenStream {
    tokens
        .into_iter()
        .map(|tree| match tree {
            TokenTree::Ident(ident) if ident == "Self" => quote!(#self_ty),
            TokenTree::Group(group) => {
                let inner = replace_self(group.stream(), self_ty);
                let mut new = proc_macro2::Group::new(group.delimiter(), inner);
                new.set_span(group.span());
                TokenTree::Group(new).into()
            }
            other => other.into(),
        })
        .collect()
}

fn type_ident(ty: &Type) -> syn::Result<syn::Ident> {
    match ty {
        Type::Path(path) => Ok(path
            .path
            .segments
            .last()
            .expect("a path has a segment")
            .ident
            .clone()),
        _ => Err(syn::Error::new_spanned(
            ty,
            "`#[cached]` goes on an impl of a struct with `#[derive(Cached)]`",
        )),
    }
}

/// `path::Name<Args>` -> `path::__Name_needs_derive_Cached` (the derive's
/// macro) and `<Args>`.
fn channel(self_ty: &Type) -> syn::Result<(TokenStream, TokenStream)> {
    let Type::Path(path) = self_ty else {
        return Err(syn::Error::new_spanned(
            self_ty,
            "`#[cached]` goes on an impl of a struct with `#[derive(Cached)]`",
        ));
    };
    let mut path = path.clone();
    let last = path.path.segments.last_mut().expect("a path has a segment");
    last.ident = generics::channel_ident(&last.ident);
    let args = std::mem::replace(&mut last.arguments, syn::PathArguments::None);
    let span = self_ty.span();
    // Every token spanned on the self type: without the derive, each use
    // is the same error at the same place, which the compiler shows once.
    let path = crate::respan(quote!(#path), span);
    Ok((path, quote!(#args)))
}

pub(crate) fn cached_impl(
    model: &CachedImpl,
    graph: &Graph,
    runtime: &crate::Runtime,
) -> syn::Result<TokenStream> {
    let private = runtime.private();
    let item = &model.item;
    let self_ty = &item.self_ty;
    let props = &model.properties;
    let (channel, key_args) = channel(self_ty)?;
    // The slots are reached through the derive's macro, in expression
    // position: without the derive, each use is the same "cannot find
    // macro" error at the same place (shown once), and nothing else fails.
    let slots_ref = quote_spanned!(self_ty.span()=> #channel!(slots [#key_args] self));
    let slots_mut = quote_spanned!(self_ty.span()=> #channel!(slots_mut [#key_args] self));
    let slots_ident = generics::slots_ident(&type_ident(self_ty)?);
    // The slots struct takes one parameter per argument of the self type,
    // without bounds, so the derive can name it with the struct's own
    // parameters and `Cache<Self>` is well-formed whatever the impl adds.
    let unbounded = generics::from_self_args(item)?;
    let (generics_decl, generics_use) = (&unbounded.decl, &unbounded.args);

    // `#[cfg]` on a cached method goes to everything generated for it.
    let cfgs: Vec<Vec<&syn::Attribute>> = props
        .iter()
        .map(|p| match &item.items[p.index] {
            ImplItem::Fn(func) => func
                .attrs
                .iter()
                .filter(|a| a.path().is_ident("cfg"))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    let slot_fields = props.iter().zip(&cfgs).map(|(p, cfg)| {
        let ident = &p.ident;
        let declared = &p.ty;
        let ty = replace_self(quote!(#declared), self_ty);
        if p.result {
            quote!(#(#cfg)* #ident: #private::OnceCell<<#ty as #private::CachedResult>::Ok>)
        } else {
            quote!(#(#cfg)* #ident: #private::OnceLock<#ty>)
        }
    });
    let slot_inits = props.iter().zip(&cfgs).map(|(p, cfg)| {
        let ident = &p.ident;
        if p.result {
            return quote!(#(#cfg)* #ident: #private::OnceCell::new());
        }
        quote!(#(#cfg)* #ident: #private::OnceLock::new())
    });
    let (marker_field, marker_init) = match &unbounded.marker {
        Some(marker) => (
            quote!(__serve_common_marker: #marker,),
            quote!(__serve_common_marker: ::core::marker::PhantomData,),
        ),
        None => (quote!(), quote!()),
    };

    let clear_slots = |slots: TokenStream, indices: &[usize]| -> TokenStream {
        let takes = indices.iter().map(|&i| {
            let (field, cfg) = (&props[i].ident, &cfgs[i]);
            quote!(#(#cfg)* #slots.#field.take();)
        });
        quote!(#(#takes)*)
    };
    let clear = |indices: &[usize]| -> TokenStream {
        let body = clear_slots(quote!(__serve_common_slots), indices);
        quote! {
            let __serve_common_slots = #slots_mut;
            #body
        }
    };
    let input_arms = graph.input_arms.iter().map(|(name, clears)| {
        let id = input_id(name);
        let body = clear_slots(quote!(self), clears);
        quote!(#id => { #body })
    });

    // The impl's own items, rewritten.
    let mut items: Vec<TokenStream> = Vec::new();
    let mut stubs: Vec<TokenStream> = Vec::new();
    let mut rewritten = vec![false; item.items.len()];
    for (i, p) in props.iter().enumerate() {
        let ImplItem::Fn(func) = &item.items[p.index] else {
            continue;
        };
        rewritten[p.index] = true;
        let (vis, ident, ty, block) = (&func.vis, &p.ident, &p.ty, &func.block);
        // The user's attributes stay on the getter, without `inline` (we set
        // it); `cfg` and lint levels also go to the generated methods.
        let attrs: Vec<&syn::Attribute> = func
            .attrs
            .iter()
            .filter(|a| !a.path().is_ident("inline"))
            .collect();
        let carried: Vec<&syn::Attribute> = attrs
            .iter()
            .copied()
            .filter(|a| {
                ["cfg", "allow", "expect", "warn", "deny"]
                    .iter()
                    .any(|n| a.path().is_ident(n))
            })
            .collect();
        let where_clause = &func.sig.generics.where_clause;
        let compute = format_ident!("__serve_common_compute_{}", ident);
        let invalidate = format_ident!("invalidate_{}", ident);
        let body = clear(&graph.invalidates[i]);
        let invalidate_doc = format!(
            "Clears the cached `{ident}` and every cached property that depends on it; the next read recomputes."
        );
        let (getter_sig, getter_body) = if p.result {
            (
                quote! {
                    #vis fn #ident(&self) -> ::core::result::Result<
                        &<#ty as #private::CachedResult>::Ok,
                        <#ty as #private::CachedResult>::Err,
                    > #where_clause
                },
                quote! {
                    #slots_ref
                        .#ident
                        .get_or_try_init(|| #private::CachedResult::into_result(Self::#compute(self)))
                },
            )
        } else {
            (
                quote!(#vis fn #ident(&self) -> &#ty #where_clause),
                quote! {
                    #slots_ref
                        .#ident
                        .get_or_init(|| Self::#compute(self))
                },
            )
        };
        let getter = quote!(#getter_sig { #getter_body });
        // A second `#[cached]` impl block of the struct expands to this:
        // what its callers see, so the one error is the block's.
        stubs.push(quote! {
            #(#carried)*
            #[allow(unused_variables, dead_code)]
            #getter_sig {
                ::core::unreachable!()
            }

            #(#carried)*
            #[allow(dead_code)]
            #vis fn #invalidate(&mut self) {
                ::core::unreachable!()
            }
        });
        let compute_attrs = &p.compute_attrs;
        items.push(quote! {
            #(#attrs)*
            #[inline]
            #getter

            #(#carried)*
            #(#[#compute_attrs])*
            #[doc(hidden)]
            #[inline(never)]
            fn #compute(&self) -> #ty #where_clause #block

            #(#carried)*
            #[doc = #invalidate_doc]
            #[inline]
            #[allow(dead_code)]
            #vis fn #invalidate(&mut self) {
                #body
            }
        });
    }
    for (setter, clears) in model.setters.iter().zip(&graph.setter_clears) {
        let ImplItem::Fn(func) = &item.items[setter.index] else {
            continue;
        };
        rewritten[setter.index] = true;
        let mut inner = func.clone();
        let inner_ident = format_ident!("__serve_common_set_{}", func.sig.ident);
        inner.sig.ident = inner_ident.clone();
        inner.vis = syn::Visibility::Inherited;
        // The user's attributes go to the setter they call (once), not to
        // the body inside it: only `cfg` and lint levels go to both.
        inner.attrs.retain(|a| {
            ["cfg", "allow", "expect", "warn", "deny"]
                .iter()
                .any(|n| a.path().is_ident(n))
        });
        let mut outer_sig = func.sig.clone();
        let mut forwarded = Vec::new();
        for (n, arg) in outer_sig.inputs.iter_mut().enumerate().skip(1) {
            if let syn::FnArg::Typed(pat_type) = arg {
                let name = format_ident!("__serve_common_arg{}", n);
                *pat_type.pat = syn::parse_quote!(#name);
                forwarded.push(name);
            }
        }
        let (attrs, vis) = (&func.attrs, &func.vis);
        let body = clear(clears);
        // Type and const parameters are passed on explicitly: they may not
        // be inferable from the arguments.
        let turbofish: Vec<&syn::Ident> = func
            .sig
            .generics
            .params
            .iter()
            .filter_map(|p| match p {
                syn::GenericParam::Type(t) => Some(&t.ident),
                syn::GenericParam::Const(c) => Some(&c.ident),
                syn::GenericParam::Lifetime(_) => None,
            })
            .collect();
        let turbofish = if turbofish.is_empty() {
            quote!()
        } else {
            quote!(::<#(#turbofish),*>)
        };
        items.push(quote! {
            #(#attrs)*
            #vis #outer_sig {
                let __serve_common_result = self.#inner_ident #turbofish(#(#forwarded),*);
                #body
                __serve_common_result
            }

            #[doc(hidden)]
            #[inline(always)]
            #[allow(clippy::inline_always)]
            #inner
        });
    }
    let properties: Vec<usize> = props.iter().map(|p| p.index).collect();
    for (index, impl_item) in item.items.iter().enumerate() {
        if model.dropped.contains(&index) {
            continue;
        }
        if !rewritten[index] {
            items.push(quote!(#impl_item));
        }
        if !properties.contains(&index) {
            stubs.push(quote!(#impl_item));
        }
    }
    // What only the derive knows (the fields) is checked by its macro:
    // dependencies and setter targets that are no property must be
    // `#[input]` fields, and a field read of an input must be declared.
    let deps = graph.input_checks.iter().map(|(_, token)| token);
    let setters = &graph.field_setters;
    let reads = graph.field_reads.iter().map(|read| {
        let (property, deps, field) = (&read.property, &read.deps, &read.field);
        quote!((#property [#(#deps)*] #field))
    });
    let names = props.iter().map(|p| &p.ident).chain(model.plain.iter());
    let check = quote_spanned! {self_ty.span()=>
        #channel! {
            check
            names [#(#names)*]
            deps [#(#deps)*]
            setters [#(#setters)*]
            reads [#(#reads)*]
        }
    };

    let impl_attrs = &item.attrs;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let unsafety = &item.unsafety;
    let guard = generics::guard_ident(&type_ident(self_ty)?);
    let guard = quote_spanned!(self_ty.span()=> #guard);
    let expansion = quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types, non_snake_case, dead_code)]
        pub struct #slots_ident #generics_decl {
            #(#slot_fields,)*
            #marker_field
        }

        #[automatically_derived]
        impl #generics_decl ::core::default::Default for #slots_ident #generics_use {
            fn default() -> Self {
                Self {
                    #(#slot_inits,)*
                    #marker_init
                }
            }
        }

        #[automatically_derived]
        impl #generics_decl #slots_ident #generics_use {
            #[doc(hidden)]
            #[inline]
            pub fn __serve_common_invalidate_input(&mut self, input: u64) {
                match input {
                    #(#input_arms)*
                    _ => {}
                }
            }
        }

        #(#impl_attrs)*
        #unsafety impl #impl_generics #self_ty #where_clause {
            #(#items)*
        }

        #check
    };
    // Through the derive's macro: without the derive, the one error is
    // that macro's "cannot find".
    Ok(quote! {
        #channel! {
            guard #guard
            first { #expansion }
            later {
                #(#impl_attrs)*
                #unsafety impl #impl_generics #self_ty #where_clause {
                    #(#stubs)*
                }
            }
        }

        // A later `#[cached]` impl block of the struct in this module finds
        // this definition (textually), not the derive's, and expands to
        // its stubs; the compiler reports the two definitions as one error,
        // "`__<Struct>_allows_one_cached_impl_block` is ambiguous".
        #[allow(unused_macros)]
        macro_rules! #guard {
            (first { $($first:tt)* } later { $($later:tt)* }) => { $($later)* };
        }
    })
}
