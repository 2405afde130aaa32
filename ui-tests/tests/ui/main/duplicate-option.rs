#[serve_common::main(ipc = false, ipc = true)]
async fn main() {}
