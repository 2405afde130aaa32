use serve_common::on_event;

#[on_event("config:*", supervisor, supervisor)]
fn handler() {}

fn main() {}
