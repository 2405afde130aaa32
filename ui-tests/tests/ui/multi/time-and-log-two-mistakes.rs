// Two independent mistakes: two errors, each on its token.
#[serve_common::time_and_log("adding {a} and {b}", level = "loud", colour = "red")]
fn add(a: u32, b: u32) -> u32 {
    a + b
}

fn main() {}
