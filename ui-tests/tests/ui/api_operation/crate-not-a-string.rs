use serve_common::default::actix::{api_operation, web};

#[api_operation(summary = "Greet", crate = serve_common)]
async fn hello() -> web::Json<u8> {
    web::Json(1)
}

fn main() {}
