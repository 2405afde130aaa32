use serve_common::default::actix::api_operation;

#[api_operation(summary = "Not a handler")]
struct Greeting;

fn main() {}
