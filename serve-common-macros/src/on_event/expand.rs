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
    let ack = match &args.ack {
        Ack::None => quote!(::serve_common::__private::AckDef::None),
        Ack::Completed => quote!(::serve_common::__private::AckDef::Completed),
        Ack::Named(lit) => quote!(::serve_common::__private::AckDef::Named(#lit)),
    };
    let event = quote!(__serve_common_event);
    let mut call_args = Vec::new();
    let mut read_payload = TokenStream::new();
    if signature.takes_name {
        call_args.push(quote!(#event.name()));
    }
    if let Some(ty) = &signature.payload {
        read_payload = quote_spanned! {ty.span()=>
            let __serve_common_payload = ::serve_common::__private::payload::<#ty>(&#event)?;
        };
        call_args.push(quote!(&*__serve_common_payload));
    }
    if let Some(asyncness) = &signature.asyncness {
        return async_handler(args, func, asyncness, &ack, &read_payload, &call_args);
    }
    let output_span = match &func.sig.output {
        syn::ReturnType::Default => name.span(),
        syn::ReturnType::Type(_, ty) => ty.span(),
    };
    // The outcome check is spanned on the return type, so a wrong one is
    // reported there.
    let call = quote! { let __serve_common_returned = #name(#(#call_args),*); };
    let outcome = quote_spanned! {output_span=>
        ::serve_common::__private::outcome(__serve_common_returned)
    };
    quote! {
        #func

        const _: () = {
            fn __serve_common_on_event(
                #event: &::serve_common::event::Event,
            ) -> ::core::result::Result<(), ::std::string::String> {
                #read_payload
                #call
                #outcome
            }

            ::serve_common::__private::inventory::submit! {
                ::serve_common::__private::OnEventHandler {
                    pattern: #pattern,
                    once: #once,
                    ack: #ack,
                    supervisor: #supervisor,
                    one_per_service: #one_per_service,
                    name: ::core::concat!(::core::module_path!(), "::", #name_str),
                    module: ::core::module_path!(),
                    line: ::core::line!(),
                    call: ::serve_common::__private::HandlerCall::Sync(__serve_common_on_event),
                }
            }
        };
    }
}

/// An `async fn` handler: the adapter clones the event into a future that
/// reads the payload, awaits the handler and turns its output into the
/// outcome; the bus runs it on its runtime.
fn async_handler(
    args: &Args,
    func: &ItemFn,
    asyncness: &syn::Token![async],
    ack: &TokenStream,
    read_payload: &TokenStream,
    call_args: &[TokenStream],
) -> TokenStream {
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let pattern = &args.pattern;
    let (once, supervisor, one_per_service) = (args.once, args.supervisor, args.one_per_service);
    let event = quote!(__serve_common_event);
    let output_span = match &func.sig.output {
        syn::ReturnType::Default => name.span(),
        syn::ReturnType::Type(_, ty) => ty.span(),
    };
    let outcome = quote_spanned! {output_span=>
        ::serve_common::__private::outcome(__serve_common_returned)
    };
    // Spanned on `async`: a future that is not `Send` is reported there.
    let boxed = quote_spanned! {asyncness.span=>
        ::std::boxed::Box::pin(async move {
            #read_payload
            let __serve_common_returned = #name(#(#call_args),*).await;
            #outcome
        })
    };
    let register = quote_spanned! {asyncness.span=>
        ::serve_common::__private::async_on_event_needs_the_tokio_feature_of_serve_common(
            __serve_common_on_event,
        )
    };
    quote! {
        #func

        const _: () = {
            fn __serve_common_on_event(
                #event: &::serve_common::event::Event,
            ) -> ::core::result::Result<
                ::serve_common::__private::AsyncRun,
                ::std::string::String,
            > {
                let #event = ::core::clone::Clone::clone(#event);
                ::core::result::Result::Ok(#boxed)
            }

            ::serve_common::__private::inventory::submit! {
                ::serve_common::__private::OnEventHandler {
                    pattern: #pattern,
                    once: #once,
                    ack: #ack,
                    supervisor: #supervisor,
                    one_per_service: #one_per_service,
                    name: ::core::concat!(::core::module_path!(), "::", #name_str),
                    module: ::core::module_path!(),
                    line: ::core::line!(),
                    call: #register,
                }
            }
        };
    }
}
