use serve_common::default::actix::{api_operation, web};

#[api_operation(crate, summary = "Greet")]
async fn hello() -> web::Json<u8> {
    web::Json(1)
}

fn main() {}
