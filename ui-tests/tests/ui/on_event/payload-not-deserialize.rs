use serve_common::on_event;

struct NotSerde {
    value: u32,
}

#[on_event("job.*")]
fn handler(payload: &NotSerde) {
    let _ = payload.value;
}

fn main() {}
