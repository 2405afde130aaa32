use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ItemFn;
use syn::spanned::Spanned;

use super::check::Signature;
use super::parse::{Ack, Args};

pub(crate) fn handler(args: &Args, func: &ItemFn, signature: &Signature) -> TokenStream {
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let pattern = &args.pattern;
    let once = args.once;
    let supervisor = args.supervisor;
    let one_per_service = args.one_per_service;
    // Everything generated lives in one `const _` block that imports the
    // runtime once: a `crate = "path"` that names nothing is one error.
    let (import, local) = args.runtime.imported();
    let (runtime, private) = (&local, local.private());
    let ack = match &args.ack {
        Ack::None => quote!(#private::AckDef::None),
        Ack::Completed => quote!(#private::AckDef::Completed),
        Ack::Named(lit) => quote!(#private::AckDef::Named(#lit)),
    };
    let event = quote!(__serve_common_event);
    let mut call_args = Vec::new();
    let mut read_payload = TokenStream::new();
    if signature.takes_name {
        call_args.push(quote!(#event.name()));
    }
    if let Some(ty) = &signature.payload {
        let private_ty = local.private_at(ty.span());
        read_payload = quote_spanned! {ty.span()=>
            let __serve_common_payload = #private_ty::payload::<#ty>(&#event)?;
        };
        call_args.push(quote!(&*__serve_common_payload));
    }
    let output_span = match &func.sig.output {
        syn::ReturnType::Default => name.span(),
        syn::ReturnType::Type(_, ty) => ty.span(),
    };
    // The outcome check is spanned on the return type, so a wrong one is
    // reported there.
    let private_output = local.private_at(output_span);
    let outcome = quote_spanned! {output_span=>
        #private_output::outcome(__serve_common_returned)
    };
    // The adapter's return type, its body, and how it is registered.
    let (returns, body, call) = match &signature.asyncness {
        None => (
            quote!(()),
            quote! {
                #read_payload
                let __serve_common_returned = #name(#(#call_args),*);
                #outcome
            },
            quote!(#private::HandlerCall::Sync(
                __serve_common_on_event
            )),
        ),
        // An `async fn`: the adapter clones the event into a future that
        // reads the payload, awaits the handler and turns its output into
        // the outcome; the bus runs it on its runtime. Spanned on `async`:
        // a future that is not `Send`, or a build without the `tokio`
        // feature, is reported there.
        Some(asyncness) => {
            let private_async = local.private_at(asyncness.span);
            (
                quote!(#private::AsyncRun),
                quote_spanned! {asyncness.span=>
                    let #event = ::core::clone::Clone::clone(#event);
                    ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                        #read_payload
                        let __serve_common_returned = #name(#(#call_args),*).await;
                        #outcome
                    }))
                },
                quote_spanned! {asyncness.span=>
                    #private_async::async_on_event_needs_the_tokio_feature_of_serve_common(
                        __serve_common_on_event,
                    )
                },
            )
        }
    };
    quote! {
        #func

        const _: () = {
            #import

            // An async handler's adapter always returns `Ok` (the future
            // reports the outcome).
            #[allow(clippy::unnecessary_wraps)]
            fn __serve_common_on_event(
                #event: &#runtime::event::Event,
            ) -> ::core::result::Result<#returns, ::std::string::String> {
                #body
            }

            #private::inventory::submit! {
                #private::OnEventHandler {
                    pattern: #pattern,
                    once: #once,
                    ack: #ack,
                    supervisor: #supervisor,
                    one_per_service: #one_per_service,
                    name: ::core::concat!(::core::module_path!(), "::", #name_str),
                    module: ::core::module_path!(),
                    line: ::core::line!(),
                    call: #call,
                }
            }
        };
    }
}
