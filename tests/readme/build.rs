//! Writes each ```rust block of the workspace's README as a module of
//! `$OUT_DIR/readme_examples.rs`, the way rustdoc reads a doc test: lines
//! starting with `# ` are kept without it, and a block without `fn main`
//! becomes the body of one; a block with a `#[tokio::test]` is a test
//! module.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Read at run time, not baked in with `env!`: a build script compiled
    // for another checkout sharing the target directory must not read that
    // checkout's README.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let readme = Path::new(&manifest_dir).join("../../README.md");
    println!("cargo:rerun-if-changed={}", readme.display());
    let text = std::fs::read_to_string(&readme).expect("the workspace's README.md");
    let mut out = String::new();
    let mut block: Option<(usize, Vec<&str>)> = None;
    for (number, line) in text.lines().enumerate() {
        match &mut block {
            None => {
                let info = line.strip_prefix("```").map(str::trim);
                let rust = info.is_some_and(|info| {
                    let mut tags = info.split(',').map(str::trim);
                    tags.next() == Some("rust")
                        && !tags.any(|t| t == "ignore" || t == "compile_fail")
                });
                if rust {
                    block = Some((number + 1, Vec::new()));
                }
            }
            Some((start, lines)) => {
                if line.starts_with("```") {
                    write_module(&mut out, *start, lines);
                    block = None;
                } else {
                    lines.push(line.strip_prefix("# ").unwrap_or(line));
                }
            }
        }
    }
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("readme_examples.rs");
    std::fs::write(dest, out).expect("write the examples");
}

fn write_module(out: &mut String, start: usize, lines: &[&str]) {
    let code = lines.join("\n");
    // A test (the README's "Testing your service") is test code: built
    // and run by `cargo test`, with the dev-dependencies the README names.
    let test = code.contains("#[tokio::test]");
    let _ = writeln!(out, "/// README.md, the block after line {start}.");
    if test {
        let _ = writeln!(out, "#[cfg(test)]");
    }
    let _ = writeln!(out, "pub mod line_{start} {{");
    if code.contains("fn main") || test {
        let _ = writeln!(out, "{code}");
    } else {
        let _ = writeln!(out, "pub fn main() {{\n{code}\n}}");
    }
    let _ = writeln!(out, "}}");
}
