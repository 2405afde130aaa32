//! What a compute body reads off `self`: the methods it calls and the
//! fields it reads, found by walking the body (and the tokens of the
//! macros in it, where `format!("{}", self.b())` hides a read).

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use syn::visit::Visit;

/// The reads of one body, in order, each with the token naming it.
#[derive(Default)]
pub(crate) struct Reads {
    /// `self.m(..)`, `Self::m(self, ..)`.
    pub(crate) methods: Vec<syn::Ident>,
    /// `self.f`.
    pub(crate) fields: Vec<syn::Ident>,
}

fn is_self(expr: &syn::Expr) -> bool {
    match expr {
        syn::Expr::Path(path) => path.qself.is_none() && path.path.is_ident("self"),
        syn::Expr::Paren(inner) => is_self(&inner.expr),
        syn::Expr::Reference(inner) => is_self(&inner.expr),
        _ => false,
    }
}

impl<'ast> Visit<'ast> for Reads {
    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        if is_self(&call.receiver) {
            self.methods.push(call.method.clone());
        }
        syn::visit::visit_expr_method_call(self, call);
    }

    fn visit_expr_field(&mut self, field: &'ast syn::ExprField) {
        if let (true, syn::Member::Named(name)) = (is_self(&field.base), &field.member) {
            self.fields.push(name.clone());
        }
        syn::visit::visit_expr_field(self, field);
    }

    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        // `Self::m(self)` / `Type::m(&self)`.
        if let (syn::Expr::Path(path), Some(first)) = (&*call.func, call.args.first())
            && path.path.segments.len() >= 2
            && is_self(first)
        {
            let last = path.path.segments.last().expect("two segments");
            self.methods.push(last.ident.clone());
        }
        syn::visit::visit_expr_call(self, call);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.scan(mac.tokens.clone());
    }

    // A nested item has its own `self`, if any.
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

impl Reads {
    /// `self . name (..)` and `self . name` in raw tokens.
    fn scan(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, tree) in trees.iter().enumerate() {
            match tree {
                TokenTree::Group(group) => self.scan(group.stream()),
                TokenTree::Ident(ident) if ident == "self" => {
                    let dot =
                        matches!(trees.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == '.');
                    // `self..x` is a range, not a read.
                    let range =
                        matches!(trees.get(i + 2), Some(TokenTree::Punct(p)) if p.as_char() == '.');
                    if let (true, false, Some(TokenTree::Ident(name))) =
                        (dot, range, trees.get(i + 2))
                    {
                        let call = matches!(trees.get(i + 3), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis);
                        if call {
                            self.methods.push(name.clone());
                        } else {
                            self.fields.push(name.clone());
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The reads of `block`.
pub(crate) fn reads(block: &syn::Block) -> Reads {
    let mut reads = Reads::default();
    reads.visit_block(block);
    reads
}
