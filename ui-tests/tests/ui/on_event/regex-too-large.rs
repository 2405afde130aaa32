use serve_common::on_event;

// Valid syntax, but larger than the engine's size limit: the runtime
// could not compile it, so neither does the macro.
#[on_event("re:(\\w{100}){100}")]
fn handler() {}

fn main() {}
