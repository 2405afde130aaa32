use serve_common::on_event;

#[on_event("job.*", single_use)]
fn handler() {}

fn main() {}
