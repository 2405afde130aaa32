use serve_common::on_event;

#[on_event("job.*")]
fn handler(event: &str, payload: &u32, extra: &u32) {
    let _ = (event, payload, extra);
}

fn main() {}
