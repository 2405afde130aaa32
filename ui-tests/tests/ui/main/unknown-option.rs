#[serve_common::main(config_path = "service.toml")]
async fn main() {}
