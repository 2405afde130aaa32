//! A baseline of `bench/http.sh` (`http_peer_stack_rps`): the stack a team
//! would assemble by hand for what serve-common gives at level INFO with a
//! log file: `tracing-actix-web` for request ids and spans,
//! `actix-web-prom` for metrics, `tracing-appender` writing the two lines
//! per request (`hit <path>`, `request completed with <status> (took <ms>
//! ms)`) to a file. Answers `GET /manage/version` like the example.
//! Usage: `peer_stack <address> <worker threads> <log file>`.

use std::time::Instant;

use actix_web::dev::Service as _;
use actix_web::{App, HttpResponse, HttpServer, web};
use actix_web_prom::PrometheusMetricsBuilder;
use tracing_actix_web::TracingLogger;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8000".to_owned());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    let file = std::path::PathBuf::from(args.next().unwrap_or_else(|| "peer.log".to_owned()));
    let appender = tracing_appender::rolling::never(
        file.parent().unwrap_or(std::path::Path::new(".")),
        file.file_name().expect("a file name"),
    );
    let (writer, _guard) = tracing_appender::non_blocking(appender);
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let prometheus = PrometheusMetricsBuilder::new("peer")
        .endpoint("/metrics")
        .build()
        .expect("the metrics middleware");
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .route(
                    "/manage/version",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .content_type("text/plain; charset=utf-8")
                            .body("0.1.0")
                    }),
                )
                .wrap_fn(|request, service| {
                    let started = Instant::now();
                    tracing::info!("hit {}", request.path());
                    let future = service.call(request);
                    async move {
                        let response = future.await?;
                        tracing::info!(
                            "request completed with {} (took {:.2} ms)",
                            response.status().as_u16(),
                            started.elapsed().as_secs_f64() * 1e3
                        );
                        Ok(response)
                    }
                })
                .wrap(prometheus.clone())
                .wrap(TracingLogger::default())
        })
        .workers(workers)
        .bind(&address)?
        .run()
        .await
    })
}
