// serve-common without its `tokio` feature has no runtime for async
// handlers: the error names the feature.
use serve_common::on_event;

#[on_event("job.*")]
async fn handler(event: &str) {
    let _ = event;
}

fn main() {}
