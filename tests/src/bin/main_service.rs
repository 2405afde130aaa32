//! A program whose `main` is `#[serve_common::main]`, for
//! tests/tests/main_macro.rs: it reports what the macro set up.

use serve_common::config::config;

#[serve_common::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("ipc {}", serve_common::ipc::is_set_up());
    println!(
        "address {}",
        serve_common::ipc::address().unwrap_or_default()
    );
    println!(
        "greeting {}",
        config().get_or("greeting", "none".to_owned())
    );
    tokio::task::yield_now().await;
    tracing::info!("inside main");
    if std::env::args().any(|a| a == "panic") {
        panic!("asked to panic");
    }
    if std::env::args().any(|a| a == "fail") {
        return Err("asked to fail".into());
    }
    Ok(())
}
