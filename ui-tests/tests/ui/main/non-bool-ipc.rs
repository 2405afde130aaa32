#[serve_common::main(ipc = "no")]
async fn main() {}
