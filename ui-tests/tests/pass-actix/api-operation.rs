//! Accepted `#[api_operation]` shapes compile and leak no lint; the
//! operation ids are the handlers' names unless given.
#![forbid(unsafe_code)]
#![deny(warnings)]
// Checked by `cargo clippy --all-targets` too (an example of this crate).
#![warn(clippy::pedantic)]

use serve_common::default::actix::{self, ApiError, web};
use serve_common::prelude::*;

/// No options.
#[api_operation]
async fn bare() -> web::Json<u8> {
    web::Json(1)
}

/// Options, errors listed.
#[api_operation(summary = "Find a note", error_code = 404)]
async fn find_note(id: web::Path<u64>) -> Result<web::Json<u64>, ApiError> {
    Err(ApiError::not_found(format!("no note {id}")))
}

/// An id of its own, and serve-common named by path.
#[api_operation(operation_id = "greet", crate = "::serve_common")]
async fn hello() -> web::Json<u8> {
    web::Json(2)
}

fn main() {
    let service = actix::service(|app| {
        app.service(actix::resource("/bare").route(actix::get().to(bare)))
            .service(actix::resource("/notes/{id}").route(actix::get().to(find_note)))
            .service(actix::resource("/hello").route(actix::get().to(hello)))
    });
    let spec = actix::actix_web_crate::rt::System::new().block_on(service.openapi());
    let ids: Vec<&str> = ["/bare", "/notes/{id}", "/hello"]
        .iter()
        .map(|path| {
            spec["paths"][path]["get"]["operationId"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(ids, ["bare", "find_note", "greet"]);
}
