use serve_common::on_event;

#[on_event("job.[a-")]
fn handler() {}

fn main() {}
