use serve_common::on_event;

// Two independent mistakes: two errors, each on its token.
#[on_event("job.*", onse)]
fn handler(event: &mut str) {
    let _ = event;
}

fn main() {}
