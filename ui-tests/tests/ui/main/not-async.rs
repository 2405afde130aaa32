#[serve_common::main]
fn main() {}
