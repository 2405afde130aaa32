use serve_common::on_event;

#[on_event("")]
fn handler() {}

fn main() {}
