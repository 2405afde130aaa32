use serve_common::on_event;

#[on_event("config:*", supervisor = true)]
fn handler() {}

fn main() {}
