//! The baseline of `bench/http.sh`: a bare actix-web app answering
//! `GET /manage/version` with text, nothing else (no middleware, no
//! logging). Usage: `bare_actix <address> <worker threads>`.

use actix_web::{App, HttpResponse, HttpServer, web};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8000".to_owned());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            App::new().route(
                "/manage/version",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("text/plain; charset=utf-8")
                        .body("0.1.0")
                }),
            )
        })
        .workers(workers)
        .bind(&address)?
        .run()
        .await
    })
}
