use serve_common::on_event;

#[on_event("job.submitted", one_per_service = true)]
fn handler() {}

fn main() {}
