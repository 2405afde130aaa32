use serve_common::on_event;

#[on_event("job.*")]
async fn handler(event: &str) {
    let _ = event;
}

fn main() {}
