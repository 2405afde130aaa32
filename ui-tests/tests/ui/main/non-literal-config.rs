const PATH: &str = "service.toml";

#[serve_common::main(config = PATH)]
async fn main() {}
