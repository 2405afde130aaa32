//! `#[sc::main(crate = "sc")]` where no `serve_common` exists.
#![deny(warnings)]
#![warn(clippy::pedantic)]

// Linked for its handlers.
use serve_common_renamed as _;

#[sc::main(crate = "sc", ipc = false, logging = false)]
async fn main() {
    println!("{}", serve_common_renamed::double(2));
}
