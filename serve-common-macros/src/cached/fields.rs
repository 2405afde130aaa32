//! `cached_check!`: the checks of a `#[cached]` impl that need the
//! struct's fields, run where the derive's macro hands them over.
//!
//! ```text
//! struct S fields [a b c] inputs [a]     <- from the derive
//! check names [p q] deps [x] setters [t] reads [(p [deps..] f) ..]
//! ```

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};

struct Read {
    property: syn::Ident,
    deps: Vec<syn::Ident>,
    field: syn::Ident,
}

struct Check {
    name: syn::Ident,
    fields: Vec<syn::Ident>,
    inputs: Vec<syn::Ident>,
    names: Vec<syn::Ident>,
    deps: Vec<syn::Ident>,
    setters: Vec<syn::Ident>,
    reads: Vec<Read>,
}

fn keyword(input: ParseStream<'_>, word: &str) -> syn::Result<()> {
    let ident: syn::Ident = input.parse()?;
    if ident == word {
        Ok(())
    } else {
        Err(syn::Error::new(ident.span(), format!("expected `{word}`")))
    }
}

fn idents(input: ParseStream<'_>, word: &str) -> syn::Result<Vec<syn::Ident>> {
    keyword(input, word)?;
    let content;
    syn::bracketed!(content in input);
    let mut out = Vec::new();
    while !content.is_empty() {
        out.push(content.parse()?);
    }
    Ok(out)
}

impl Parse for Check {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        input.parse::<syn::Token![struct]>()?;
        let name = input.parse()?;
        let fields = idents(input, "fields")?;
        let inputs = idents(input, "inputs")?;
        let names = idents(input, "names")?;
        let deps = idents(input, "deps")?;
        let setters = idents(input, "setters")?;
        keyword(input, "reads")?;
        let content;
        syn::bracketed!(content in input);
        let mut reads = Vec::new();
        while !content.is_empty() {
            let read;
            syn::parenthesized!(read in content);
            let property = read.parse()?;
            let deps;
            syn::bracketed!(deps in read);
            let mut names = Vec::new();
            while !deps.is_empty() {
                names.push(deps.parse()?);
            }
            let field = read.parse()?;
            reads.push(Read {
                property,
                deps: names,
                field,
            });
        }
        Ok(Self {
            name,
            fields,
            inputs,
            names,
            deps,
            setters,
            reads,
        })
    }
}

/// Edit distance counting a swap of two neighbours as one edit (optimal
/// string alignment), for "a similar name exists".
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0_usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The closest of `candidates` to `name`, if close enough to be a typo.
fn similar<'a>(name: &str, candidates: impl Iterator<Item = &'a syn::Ident>) -> Option<String> {
    candidates
        .map(|c| (distance(name, &c.to_string()), c.to_string()))
        .filter(|(d, c)| *d > 0 && *d <= name.len().max(c.len()) / 3)
        .min()
        .map(|(_, c)| c)
}

impl Check {
    fn is_known(&self, name: &syn::Ident) -> bool {
        self.fields.iter().chain(&self.names).any(|f| f == name)
    }

    /// `what` must be an `#[input]` field: the error if it is not.
    fn not_an_input(&self, token: &syn::Ident, role: &str) -> Option<syn::Error> {
        let name = token.to_string();
        if self.inputs.iter().any(|i| *i == name) {
            return None;
        }
        let strukt = &self.name;
        let message = if self.fields.iter().any(|f| *f == name) {
            format!(
                "{role}`{name}` is a field of `{strukt}` but not an `#[input]`: mark it `#[input]` so that changing it invalidates what depends on it"
            )
        } else {
            let hint = similar(&name, self.fields.iter().chain(&self.names))
                .map(|s| format!("; a field or property with a similar name exists: `{s}`"))
                .unwrap_or_default();
            format!("{role}no field or cached property `{name}` in `{strukt}`{hint}")
        };
        Some(syn::Error::new(token.span(), message))
    }

    fn errors(&self) -> Vec<syn::Error> {
        let mut errors = Vec::new();
        for dep in &self.deps {
            errors.extend(self.not_an_input(dep, ""));
        }
        for target in &self.setters {
            errors.extend(self.not_an_input(target, &format!("`#[setter({target})]`: ")));
        }
        for read in &self.reads {
            let name = read.field.to_string();
            // A misspelt dependency already says what was meant.
            let misspelt = read.deps.iter().any(|dep| {
                !self.is_known(dep)
                    && similar(&dep.to_string(), self.fields.iter().chain(&self.names))
                        .is_some_and(|s| s == name)
            });
            if misspelt {
                continue;
            }
            if self.inputs.iter().any(|i| *i == name) && !read.deps.iter().any(|d| *d == name) {
                let own = &read.property;
                let hint = if read.deps.is_empty() {
                    format!("add `#[dependency({name})]`")
                } else {
                    format!("add `{name}` to its `#[dependency(...)]`")
                };
                errors.push(syn::Error::new(
                    read.field.span(),
                    format!(
                        "`{own}` reads the `#[input]` field `{name}` without declaring it, so it would not be recomputed when `{name}` is set: {hint}"
                    ),
                ));
            }
        }
        errors
    }
}

pub(crate) fn check(input: TokenStream) -> TokenStream {
    match syn::parse2::<Check>(input) {
        Ok(check) => check
            .errors()
            .into_iter()
            .map(syn::Error::into_compile_error)
            .collect(),
        Err(error) => error.into_compile_error(),
    }
}
