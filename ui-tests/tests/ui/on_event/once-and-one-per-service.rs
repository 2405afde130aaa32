use serve_common::on_event;

#[on_event("job.submitted", once, one_per_service)]
fn handler() {}

fn main() {}
