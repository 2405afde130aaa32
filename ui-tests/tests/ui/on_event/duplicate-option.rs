use serve_common::on_event;

#[on_event("job.*", once, once)]
fn handler() {}

fn main() {}
