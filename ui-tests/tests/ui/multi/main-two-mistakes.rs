// Two independent mistakes: two errors, each on its token.
#[serve_common::main(ipc = "no")]
fn main() {}
