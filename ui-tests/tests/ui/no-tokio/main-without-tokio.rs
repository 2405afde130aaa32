// serve-common without its `tokio` feature cannot run `main`'s body: one
// error, naming the feature.
#[serve_common::main]
async fn main() {}
