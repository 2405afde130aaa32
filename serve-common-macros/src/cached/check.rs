//! Rules that span several methods: names, duplicates, cycles; and the
//! invalidation sets they imply.

use std::collections::{BTreeMap, BTreeSet};

use super::model::CachedImpl;

/// What a setter or input invalidates: cached properties, by index.
pub(crate) struct Graph {
    /// For each cached property: itself and its transitive dependents.
    pub(crate) invalidates: Vec<Vec<usize>>,
    /// For each setter (same order as `model.setters`): what it clears.
    pub(crate) setter_clears: Vec<Vec<usize>>,
    /// Dependencies that name neither a cached nor a plain property: they
    /// must be `#[input]` fields (checked by the compiler, with a span).
    /// Field name -> (a token naming it, transitive dependents).
    pub(crate) inputs: BTreeMap<String, (syn::Ident, Vec<usize>)>,
}

impl Graph {
    /// The graph of what is valid, and an error for each mistake: the
    /// expansion goes on with the graph, so one mistake is one error.
    pub(crate) fn build(model: &CachedImpl, errors: &mut Vec<syn::Error>) -> Self {
        let props = &model.properties;
        let index_of: BTreeMap<String, usize> = props
            .iter()
            .enumerate()
            .map(|(i, p)| (p.ident.to_string(), i))
            .collect();
        // Setters: a known property, one setter each.
        let plain: BTreeSet<String> = model.plain.iter().map(ToString::to_string).collect();
        let mut has_setter = BTreeSet::new();
        for setter in &model.setters {
            let name = setter.target.to_string();
            if !index_of.contains_key(&name) && !plain.contains(&name) {
                errors.push(syn::Error::new_spanned(
                    &setter.target,
                    format!(
                        "`#[setter({name})]` names no property of this impl: a setter targets a `#[cached]` method or a plain getter method of the same impl"
                    ),
                ));
            } else if !has_setter.insert(name.clone()) {
                errors.push(syn::Error::new_spanned(
                    &setter.target,
                    format!("property `{name}` has two setters"),
                ));
            }
        }
        // Edges: dependency -> dependent. Names that are not properties
        // here are inputs, unless they are plain methods without a setter.
        let mut dependents: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut input_tokens: BTreeMap<String, syn::Ident> = BTreeMap::new();
        for (i, p) in props.iter().enumerate() {
            for dep in &p.deps {
                let name = dep.to_string();
                if plain.contains(&name) && !has_setter.contains(&name) {
                    errors.push(syn::Error::new_spanned(
                        dep,
                        format!(
                            "`{name}` never changes through this API: it has no `#[setter({name})]`, so `{}` would never be invalidated. Add a setter, or depend on the `#[input]` field it reads",
                            p.ident
                        ),
                    ));
                    continue;
                }
                if !index_of.contains_key(&name) && !plain.contains(&name) {
                    input_tokens
                        .entry(name.clone())
                        .or_insert_with(|| dep.clone());
                }
                dependents.entry(name).or_default().push(i);
            }
        }
        if let Some(error) = find_cycle(model, &index_of) {
            errors.push(error);
        }
        let closure = |start: &str| -> Vec<usize> {
            let mut out = BTreeSet::new();
            let mut stack: Vec<usize> = dependents.get(start).cloned().unwrap_or_default();
            while let Some(i) = stack.pop() {
                if out.insert(i) {
                    stack.extend(
                        dependents
                            .get(&props[i].ident.to_string())
                            .into_iter()
                            .flatten(),
                    );
                }
            }
            out.into_iter().collect()
        };
        let invalidates = props
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut set = closure(&p.ident.to_string());
                set.push(i);
                set.sort_unstable();
                set.dedup();
                set
            })
            .collect::<Vec<_>>();
        let setter_clears = model
            .setters
            .iter()
            .map(|s| {
                let name = s.target.to_string();
                match index_of.get(&name) {
                    Some(&i) => invalidates[i].clone(),
                    None if plain.contains(&name) => closure(&name),
                    None => Vec::new(),
                }
            })
            .collect();
        let inputs = input_tokens
            .into_iter()
            .map(|(name, token)| {
                let clears = closure(&name);
                (name, (token, clears))
            })
            .collect();
        Self {
            invalidates,
            setter_clears,
            inputs,
        }
    }
}

/// A dependency cycle among cached properties, reported on the dependency
/// token that closes it, naming the whole cycle.
fn find_cycle(model: &CachedImpl, index_of: &BTreeMap<String, usize>) -> Option<syn::Error> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        model: &CachedImpl,
        index_of: &BTreeMap<String, usize>,
        i: usize,
        marks: &mut Vec<Mark>,
        path: &mut Vec<usize>,
    ) -> Option<syn::Error> {
        marks[i] = Mark::Open;
        path.push(i);
        for dep in &model.properties[i].deps {
            let Some(&j) = index_of.get(&dep.to_string()) else {
                continue;
            };
            match marks[j] {
                Mark::Open => {
                    let start = path.iter().position(|&k| k == j).unwrap_or(0);
                    let mut names: Vec<String> = path[start..]
                        .iter()
                        .map(|&k| model.properties[k].ident.to_string())
                        .collect();
                    names.push(dep.to_string());
                    return Some(syn::Error::new_spanned(
                        dep,
                        format!("dependency cycle: {}", names.join(" -> ")),
                    ));
                }
                Mark::New => {
                    if let Some(error) = visit(model, index_of, j, marks, path) {
                        return Some(error);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; model.properties.len()];
    for i in 0..model.properties.len() {
        if marks[i] != Mark::New {
            continue;
        }
        if let Some(error) = visit(model, index_of, i, &mut marks, &mut Vec::new()) {
            return Some(error);
        }
    }
    None
}
