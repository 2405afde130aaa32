use serve_common::on_event;

#[on_event("job.submitted", one_per_service, one_per_service)]
fn handler() {}

fn main() {}
