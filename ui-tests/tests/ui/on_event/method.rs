use serve_common::on_event;

struct Service;

impl Service {
    #[on_event("job.*")]
    fn handler(&self, event: &str) {
        let _ = event;
    }
}

fn main() {}
