use serve_common::on_event;

#[on_event("job.*")]
fn handler(payload: &u32, event: &str) {
    let _ = (event, payload);
}

fn main() {}
