use serve_common::on_event;

#[on_event("re:job\\.(\\d+")]
fn handler() {}

fn main() {}
