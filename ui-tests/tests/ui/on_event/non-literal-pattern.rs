use serve_common::on_event;

const PATTERN: &str = "job.*";

#[on_event(PATTERN)]
fn handler() {}

fn main() {}
