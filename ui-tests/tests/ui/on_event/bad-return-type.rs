use serve_common::on_event;

#[on_event("job.*")]
fn handler(event: &str) -> usize {
    event.len()
}

fn main() {}
