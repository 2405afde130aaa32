#[serve_common::main(crate = serve_common, ipc = false)]
async fn main() {}
