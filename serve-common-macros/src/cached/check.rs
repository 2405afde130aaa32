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
    /// What setting an `#[input]` field of each name clears. Every name
    /// that could be a field gets an entry: dependencies on fields, and
    /// properties or plain getters named like a field (`fn n(&self)` over
    /// a field `n`): an entry for a name that is no input is never used.
    pub(crate) input_arms: BTreeMap<String, Vec<usize>>,
    /// Dependencies that must be `#[input]` fields, with the token naming
    /// them: the derive's macro checks each, with the error on that token.
    pub(crate) input_checks: Vec<(String, syn::Ident)>,
    /// Setter targets that must be `#[input]` fields (a setter changing a
    /// field in place: `#[setter(notes)] fn add(..)`).
    pub(crate) field_setters: Vec<syn::Ident>,
    /// Field reads the derive's macro checks: a read of an `#[input]`
    /// field must be declared. (property, its dependencies, the field).
    pub(crate) field_reads: Vec<FieldRead>,
}

/// A compute body reading `self.field`.
pub(crate) struct FieldRead {
    pub(crate) property: syn::Ident,
    pub(crate) deps: Vec<syn::Ident>,
    pub(crate) field: syn::Ident,
}

/// What a dependency name resolves to.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Property(usize),
    Plain(String),
    Field(String),
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
        let plain: BTreeSet<String> = model.plain.iter().map(ToString::to_string).collect();
        // Setters: a known property, one setter each.
        let mut has_setter: BTreeSet<String> = model.failed_setter_targets.clone();
        let mut field_setters: Vec<syn::Ident> = Vec::new();
        for setter in &model.setters {
            let name = setter.target.to_string();
            let known = index_of.contains_key(&name)
                || plain.contains(&name)
                || model.failed.contains(&name);
            if !known {
                // An `#[input]` field changed in place (several setters
                // may): the derive's macro checks that it is one.
                if !field_setters.iter().any(|f| *f == name) {
                    field_setters.push(setter.target.clone());
                }
            } else if !has_setter.insert(name.clone()) {
                errors.push(syn::Error::new_spanned(
                    &setter.target,
                    format!("property `{name}` has two setters"),
                ));
            }
        }
        // Edges: what each dependency name resolves to -> its dependents.
        let mut dependents: BTreeMap<Node, Vec<usize>> = BTreeMap::new();
        let mut input_checks: Vec<(String, syn::Ident)> = Vec::new();
        for (i, p) in props.iter().enumerate() {
            for dep in &p.deps {
                let name = dep.to_string();
                let node = match index_of.get(&name) {
                    // A property cannot depend on itself: its own name is
                    // the field it reads (`fn n(&self)` over a field `n`).
                    Some(&j) if j != i => Node::Property(j),
                    _ if plain.contains(&name) && has_setter.contains(&name) => {
                        Node::Plain(name.clone())
                    }
                    // A cached method that failed its own checks: that
                    // error is enough.
                    _ if model.failed.contains(&name) => continue,
                    _ => Node::Field(name.clone()),
                };
                let new_field = match &node {
                    Node::Field(field) => !input_checks.iter().any(|(seen, _)| seen == field),
                    _ => false,
                };
                if new_field {
                    input_checks.push((name.clone(), dep.clone()));
                }
                dependents.entry(node).or_default().push(i);
            }
        }
        if let Some(error) = find_cycle(model, &index_of) {
            errors.push(error);
        }
        let field_reads = check_reads(model, &index_of, &has_setter, errors);
        let closure = |start: &Node| -> Vec<usize> {
            let mut out = BTreeSet::new();
            let mut stack: Vec<usize> = dependents.get(start).cloned().unwrap_or_default();
            while let Some(i) = stack.pop() {
                if out.insert(i) {
                    stack.extend(dependents.get(&Node::Property(i)).into_iter().flatten());
                }
            }
            out.into_iter().collect()
        };
        let invalidates: Vec<Vec<usize>> = (0..props.len())
            .map(|i| {
                let mut set = closure(&Node::Property(i));
                set.push(i);
                set.sort_unstable();
                set.dedup();
                set
            })
            .collect();
        let setter_clears = model
            .setters
            .iter()
            .map(|s| {
                let name = s.target.to_string();
                match index_of.get(&name) {
                    Some(&i) => invalidates[i].clone(),
                    None if has_setter.contains(&name) => closure(&Node::Plain(name)),
                    None => closure(&Node::Field(name)),
                }
            })
            .collect();
        let mut input_arms: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut add = |name: &str, clears: &[usize]| {
            let arm = input_arms.entry(name.to_owned()).or_default();
            arm.extend_from_slice(clears);
            arm.sort_unstable();
            arm.dedup();
        };
        for (i, p) in props.iter().enumerate() {
            add(&p.ident.to_string(), &invalidates[i]);
        }
        for name in &has_setter {
            add(name, &closure(&Node::Plain(name.clone())));
        }
        for (name, _) in &input_checks {
            add(name, &closure(&Node::Field(name.clone())));
        }
        for field in &field_setters {
            let name = field.to_string();
            add(&name, &closure(&Node::Field(name.clone())));
        }
        input_arms.retain(|_, clears| !clears.is_empty());
        Self {
            invalidates,
            setter_clears,
            input_arms,
            input_checks,
            field_setters,
            field_reads,
        }
    }
}

/// Checks each compute body against its declared dependencies: a read of
/// another cached property or of a property with a setter must be
/// declared, and a property cannot read itself. Field reads are returned
/// for the derive's macro, which knows the `#[input]` fields.
fn check_reads(
    model: &CachedImpl,
    index_of: &BTreeMap<String, usize>,
    has_setter: &BTreeSet<String>,
    errors: &mut Vec<syn::Error>,
) -> Vec<FieldRead> {
    let mut field_reads = Vec::new();
    for p in &model.properties {
        let own = p.ident.to_string();
        let declared = |name: &str| p.deps.iter().any(|d| d == name);
        let is_property = |name: &str| {
            index_of.contains_key(name) || has_setter.contains(name) || model.failed.contains(name)
        };
        let add_hint = |name: &str| {
            if p.deps.is_empty() {
                format!("add `#[dependency({name})]`")
            } else {
                format!("add `{name}` to its `#[dependency(...)]`")
            }
        };
        let mut reported = BTreeSet::new();
        for method in &p.reads.methods {
            let name = method.to_string();
            if name == own {
                if reported.insert(name.clone()) {
                    errors.push(syn::Error::new_spanned(
                        method,
                        format!(
                            "`{own}` reads itself: a cached property cannot use its own value while computing it (the read would wait for itself)"
                        ),
                    ));
                }
            } else if is_property(&name) && !declared(&name) && reported.insert(name.clone()) {
                errors.push(syn::Error::new_spanned(
                    method,
                    format!(
                        "`{own}` reads `{name}` without declaring it, so it would not be recomputed when `{name}` changes: {}",
                        add_hint(&name)
                    ),
                ));
            }
        }
        for field in &p.reads.fields {
            let name = field.to_string();
            // Its own name is the field it reads (`fn n(&self)` over `n`).
            if name == own || declared(&name) || !reported.insert(name.clone()) {
                continue;
            }
            if is_property(&name) {
                // The field behind a property of the same name.
                errors.push(syn::Error::new_spanned(
                    field,
                    format!(
                        "`{own}` reads `{name}` without declaring it, so it would not be recomputed when `{name}` changes: {}",
                        add_hint(&name)
                    ),
                ));
            } else {
                field_reads.push(FieldRead {
                    property: p.ident.clone(),
                    deps: p.deps.clone(),
                    field: field.clone(),
                });
            }
        }
    }
    field_reads
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
            if j == i {
                // Its own name is the field it reads, not a cycle.
                continue;
            }
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
