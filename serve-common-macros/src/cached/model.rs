//! A typed model of a `#[cached]` impl block, keeping syn nodes for spans.

use std::collections::BTreeSet;

use proc_macro2::TokenStream;

use syn::{Attribute, FnArg, ImplItem, ImplItemFn, ItemImpl, ReturnType, Type};

/// A `#[cached]` method.
pub(crate) struct Property {
    pub(crate) ident: syn::Ident,
    /// The declared return type `T` (the getter returns `&T`).
    pub(crate) ty: Type,
    pub(crate) deps: Vec<syn::Ident>,
    /// Index of the method in `item.items`.
    pub(crate) index: usize,
    /// What its body reads off `self`.
    pub(crate) reads: super::reads::Reads,
    /// `#[cached(result)]`: only an `Ok` is kept.
    pub(crate) result: bool,
    /// `#[compute(attr)]`: attributes for the computation (not the getter).
    pub(crate) compute_attrs: Vec<TokenStream>,
}

/// A `#[setter(name)]` method.
pub(crate) struct Setter {
    pub(crate) target: syn::Ident,
    pub(crate) index: usize,
}

pub(crate) struct CachedImpl {
    /// The impl with our attributes removed.
    pub(crate) item: ItemImpl,
    pub(crate) properties: Vec<Property>,
    pub(crate) setters: Vec<Setter>,
    /// Methods that are neither cached nor setters (candidate plain properties).
    pub(crate) plain: Vec<syn::Ident>,
    /// Items left out of the expansion (a second cached method of a name).
    pub(crate) dropped: Vec<usize>,
    /// Names of cached methods that failed their checks: already reported,
    /// so naming them elsewhere is not another error.
    pub(crate) failed: BTreeSet<String>,
    /// Properties whose setter failed its checks: they count as having one.
    pub(crate) failed_setter_targets: BTreeSet<String>,
}

enum Marker {
    /// `#[cached]`, or `#[cached(result)]` (true).
    Cached(Attribute, bool),
    Dependency(Attribute, Vec<syn::Ident>),
    Setter(Attribute, syn::Ident),
    /// `#[compute(attr)]`: `attr`.
    Compute(Attribute, TokenStream),
}

/// `#[name]` or `#[serve_common::name]`.
/// `#[name]`, `#[serve_common::name]`, or the same through serve-common
/// under another name (`#[sc::name]`, with `crate = "sc"`).
pub(crate) fn is_named(attr: &Attribute, name: &str) -> bool {
    let path = attr.path();
    path.is_ident(name)
        || (path.segments.len() == 2
            && path.leading_colon.is_none()
            && path.segments[1].ident == name)
}

fn take_markers(attrs: &mut Vec<Attribute>, errors: &mut Vec<syn::Error>) -> Vec<Marker> {
    let mut markers = Vec::new();
    attrs.retain(|attr| {
        if is_named(attr, "cached") {
            let mut result = false;
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                let parsed = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("result") {
                        result = true;
                        Ok(())
                    } else {
                        Err(meta.error(
                            "unknown option of a cached method; expected `#[cached]` or `#[cached(result)]` (name dependencies with `#[dependency(...)]`)",
                        ))
                    }
                });
                if let Err(error) = parsed {
                    errors.push(error);
                }
            }
            markers.push(Marker::Cached(attr.clone(), result));
            false
        } else if is_named(attr, "compute") {
            match &attr.meta {
                syn::Meta::List(list) if !list.tokens.is_empty() => {
                    markers.push(Marker::Compute(attr.clone(), list.tokens.clone()));
                }
                _ => errors.push(syn::Error::new_spanned(
                    attr,
                    "`#[compute(...)]` holds an attribute for the computation, e.g. `#[compute(time_and_log(\"index built\"))]`",
                )),
            }
            false
        } else if is_named(attr, "dependency") {
            let parsed = attr.parse_args_with(
                syn::punctuated::Punctuated::<syn::Ident, syn::Token![,]>::parse_terminated,
            );
            match parsed {
                Ok(names) if !names.is_empty() => {
                    markers.push(Marker::Dependency(attr.clone(), names.into_iter().collect()))
                }
                Ok(_) => errors.push(syn::Error::new_spanned(
                    attr,
                    "`#[dependency(...)]` names at least one property or `#[input]` field",
                )),
                Err(e) => errors.push(syn::Error::new(
                    e.span(),
                    format!("{e}; expected `#[dependency(name, other_name, ...)]`"),
                )),
            }
            false
        } else if is_named(attr, "setter") {
            match attr.parse_args::<syn::Ident>() {
                Ok(target) => markers.push(Marker::Setter(attr.clone(), target)),
                Err(e) => errors.push(syn::Error::new(
                    e.span(),
                    format!("{e}; expected `#[setter(property_name)]`"),
                )),
            }
            false
        } else {
            true
        }
    });
    markers
}

/// Checks `fn name(&self) -> T` with `T` owned.
fn check_getter(func: &ImplItemFn, errors: &mut Vec<syn::Error>) -> Option<Type> {
    let sig = &func.sig;
    let mut ok = true;
    let mut fail = |error: syn::Error| {
        errors.push(error);
        ok = false;
    };
    if let Some(asyncness) = &sig.asyncness {
        fail(syn::Error::new(
            asyncness.span,
            "a cached property cannot be async: it is read through `&self` without awaiting. Compute the value in a sync method, or keep a `tokio::sync::OnceCell` field and `get_or_init(..).await` it",
        ));
    }
    if let Some(constness) = &sig.constness {
        fail(syn::Error::new(
            constness.span,
            "a cached property cannot be `const`: its cache is filled at run time",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        fail(syn::Error::new(
            unsafety.span,
            "a cached property cannot be `unsafe`: the getter is safe to call; keep the `unsafe` block inside the body",
        ));
    }
    if let Some(abi) = &sig.abi {
        fail(syn::Error::new_spanned(
            abi,
            "a cached property cannot have an ABI: the getter is a Rust method",
        ));
    }
    if !sig.generics.params.is_empty() {
        fail(syn::Error::new_spanned(
            &sig.generics,
            "a cached property cannot be generic: it has one value",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) => {
            if let Some(mutability) = &receiver.mutability {
                fail(syn::Error::new(
                    mutability.span,
                    "a cached property is read through `&self`; change it with a `#[setter]`",
                ));
            } else if receiver.reference.is_none() || receiver.colon_token.is_some() {
                fail(syn::Error::new_spanned(
                    receiver,
                    "a cached property takes `&self`",
                ));
            }
        }
        Some(other) => fail(syn::Error::new_spanned(
            other,
            "a cached property takes `&self` first",
        )),
        None => fail(syn::Error::new(
            sig.paren_token.span.join(),
            "a cached property takes `&self`",
        )),
    }
    if let Some(extra) = inputs.next() {
        fail(syn::Error::new_spanned(
            extra,
            "a cached property takes no arguments besides `&self`: its value must depend on the struct only",
        ));
    }
    let ty = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if let Some(borrow) = find_borrow(&ty) {
        fail(syn::Error::new(
            borrow,
            "a cached property returns an owned value (the cache hands out `&T`); a borrow cannot be stored in the cache. Return `T`, `Arc<T>` or `Box<T>`",
        ));
    }
    ok.then_some(ty)
}

/// The span of a non-`'static` reference, lifetime or `impl Trait` in `ty`.
fn find_borrow(ty: &Type) -> Option<proc_macro2::Span> {
    use syn::visit::Visit;
    struct Finder(Option<proc_macro2::Span>);
    impl<'ast> Visit<'ast> for Finder {
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            if r.lifetime.as_ref().is_none_or(|l| l.ident != "static") {
                self.0.get_or_insert(r.and_token.span);
            }
            syn::visit::visit_type_reference(self, r);
        }
        fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
            if l.ident != "static" {
                self.0.get_or_insert(l.span());
            }
        }
        fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
            self.0.get_or_insert(t.impl_token.span);
        }
        // `fn(&str) -> bool` and `dyn Fn(&str)` own nothing borrowed.
        fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}
        fn visit_parenthesized_generic_arguments(
            &mut self,
            _: &'ast syn::ParenthesizedGenericArguments,
        ) {
        }
    }
    let mut finder = Finder(None);
    finder.visit_type(ty);
    finder.0
}

/// For `#[cached(result)]`: the return type must be spelled `Result<..>`
/// (any path, aliases such as `io::Result<T>` included).
fn check_result(ty: &Type, errors: &mut Vec<syn::Error>) -> bool {
    let is_result = matches!(ty, Type::Path(p) if p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == "Result"
            && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))));
    if !is_result {
        errors.push(syn::Error::new_spanned(
            ty,
            "`#[cached(result)]` keeps the `Ok` value of a method returning `Result<T, E>` (an `Err` is returned and computed again next time); this method does not return a `Result`",
        ));
    }
    is_result
}

fn check_setter(func: &ImplItemFn, attr: &Attribute, errors: &mut Vec<syn::Error>) -> bool {
    let sig = &func.sig;
    if let Some(asyncness) = &sig.asyncness {
        errors.push(syn::Error::new(asyncness.span, "a setter cannot be async"));
        return false;
    }
    let borrow = match &sig.output {
        ReturnType::Type(_, ty) => find_borrow(ty),
        ReturnType::Default => None,
    };
    if let Some(borrow) = borrow {
        errors.push(syn::Error::new(
            borrow,
            "a setter cannot return a borrow: the cache is cleared after its body runs, which needs `&mut self` again. Return an owned value or `()`",
        ));
        return false;
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(r))
            if r.reference.is_some() && r.mutability.is_some() && r.colon_token.is_none() =>
        {
            true
        }
        Some(other) => {
            errors.push(syn::Error::new_spanned(other, "a setter takes `&mut self`"));
            false
        }
        None => {
            errors.push(syn::Error::new_spanned(
                attr,
                "a setter is a method taking `&mut self`",
            ));
            false
        }
    }
}

impl CachedImpl {
    /// Parses what it can and records every problem, so the user sees all
    /// of them at once.
    pub(crate) fn parse(mut item: ItemImpl) -> syn::Result<(Self, Vec<syn::Error>)> {
        let mut errors = Vec::new();
        if let Some((_, path, _)) = &item.trait_ {
            return Err(syn::Error::new_spanned(
                path,
                "`#[cached]` goes on an inherent impl (`impl Type`), not a trait impl",
            ));
        }
        let mut properties = Vec::new();
        let mut setters = Vec::new();
        let mut plain = Vec::new();
        let mut dropped = Vec::new();
        let mut failed = BTreeSet::new();
        let mut failed_setter_targets = BTreeSet::new();
        for (index, impl_item) in item.items.iter_mut().enumerate() {
            let ImplItem::Fn(func) = impl_item else {
                continue;
            };
            let markers = take_markers(&mut func.attrs, &mut errors);
            let cached = markers.iter().find_map(|m| match m {
                Marker::Cached(attr, _) => Some(attr),
                _ => None,
            });
            let result = markers.iter().any(|m| matches!(m, Marker::Cached(_, true)));
            let mut compute_attrs = Vec::new();
            let mut deps = Vec::new();
            let mut setter = None;
            for marker in &markers {
                match marker {
                    Marker::Cached(..) => {}
                    Marker::Compute(attr, tokens) => {
                        if cached.is_none() {
                            errors.push(syn::Error::new_spanned(
                                attr.path(),
                                "`#[compute(...)]` goes with `#[cached]`: it puts an attribute on the computation of a cached property",
                            ));
                        } else {
                            compute_attrs.push(tokens.clone());
                        }
                    }
                    Marker::Dependency(attr, names) => {
                        if cached.is_none() {
                            errors.push(syn::Error::new_spanned(
                                attr.path(),
                                "`#[dependency]` goes with `#[cached]`: only a cached property is invalidated when what it depends on changes",
                            ));
                        }
                        for name in names {
                            if !deps.contains(name) {
                                deps.push(name.clone());
                            }
                        }
                    }
                    Marker::Setter(attr, target) => {
                        if cached.is_some() {
                            errors.push(syn::Error::new_spanned(
                                attr.path(),
                                "a method cannot be both `#[cached]` and a `#[setter]`",
                            ));
                        } else if setter.is_some() {
                            errors
                                .push(syn::Error::new_spanned(attr, "one `#[setter]` per method"));
                        } else if check_setter(func, attr, &mut errors) {
                            setter = Some(target.clone());
                        } else {
                            failed_setter_targets.insert(target.to_string());
                        }
                    }
                }
            }
            if cached.is_some()
                && properties
                    .iter()
                    .any(|p: &Property| p.ident == func.sig.ident)
            {
                errors.push(syn::Error::new_spanned(
                    &func.sig.ident,
                    format!("duplicate cached property `{}`", func.sig.ident),
                ));
                dropped.push(index);
            } else if cached.is_some() {
                let checked = check_getter(func, &mut errors)
                    .filter(|ty| !result || check_result(ty, &mut errors));
                match checked {
                    Some(ty) => properties.push(Property {
                        ident: func.sig.ident.clone(),
                        ty,
                        deps,
                        index,
                        reads: super::reads::reads(&func.block),
                        result,
                        compute_attrs,
                    }),
                    None => {
                        failed.insert(func.sig.ident.to_string());
                    }
                }
            } else if let Some(target) = setter {
                setters.push(Setter { target, index });
            } else {
                plain.push(func.sig.ident.clone());
            }
        }
        Ok((
            Self {
                item,
                properties,
                setters,
                plain,
                dropped,
                failed,
                failed_setter_targets,
            },
            errors,
        ))
    }
}

/// The input with `#[cached]`, `#[dependency]` and `#[setter]` removed from
/// its methods: emitted next to an error so one mistake does not cascade.
pub(crate) fn strip_inert_attributes(item: TokenStream) -> TokenStream {
    match syn::parse2::<ItemImpl>(item.clone()) {
        Ok(mut item_impl) => {
            let mut ignored = Vec::new();
            for impl_item in &mut item_impl.items {
                if let ImplItem::Fn(func) = impl_item {
                    take_markers(&mut func.attrs, &mut ignored);
                }
            }
            quote::quote!(#item_impl)
        }
        Err(_) => item,
    }
}
