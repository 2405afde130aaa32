use serve_common::on_event;

#[on_event("job.*")]
fn handler(payload: &mut u32) {
    let _ = payload;
}

fn main() {}
