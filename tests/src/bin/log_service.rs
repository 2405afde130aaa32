//! A service for tests/tests/log_files.rs: every request logs one line
//! naming its number; the `serve` closure and `main` log too.

use serve_common::default::actix::{self, web};
use serve_common::prelude::*;

#[api_operation(summary = "Logs one line naming `n`")]
async fn request(n: web::Path<u64>) -> Result<web::Json<u64>, ApiError> {
    tracing::info!(n = *n, "request line");
    Ok(web::Json(*n))
}

fn routes(app: actix::App) -> actix::App {
    tracing::info!(pid = std::process::id(), "inside the serve closure");
    app.service(actix::resource("/r/{n}").route(actix::get().to(request)))
}

#[serve_common::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing::info!(pid = std::process::id(), "inside main, before serve");
    actix::serve(routes).await?;
    Ok(())
}
