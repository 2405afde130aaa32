use serve_common::on_event;

// Its future holds an `Rc` across an await: it cannot run on the bus's
// runtime, which may move it between threads.
#[on_event("job.*")]
async fn handler(event: &str) {
    let shared = std::rc::Rc::new(event.to_owned());
    std::future::ready(()).await;
    let _ = shared;
}

fn main() {}
