//! The service `bench/http.sh` scrapes (`metrics_scrape_ms`): the example's
//! kind of service with about 1,000 metric series, from the `metrics`
//! facade, in every worker process. Config from `SERVE_COMMON_CONFIG`.

use serve_common::default::actix::{self, web};
use serve_common::prelude::*;

/// Labelled counters and gauges recorded once: 500 + 100 series.
fn record_series() {
    for shard in 0..50 {
        for kind in 0..10 {
            counter!("bench_jobs_total", "shard" => shard.to_string(), "kind" => kind.to_string())
                .increment(1);
        }
        gauge!("bench_queue_depth", "shard" => shard.to_string()).set(f64::from(shard));
        gauge!("bench_queue_age_seconds", "shard" => shard.to_string()).set(1.5);
    }
    // Histograms: 20 of them, 14 lines each.
    for route in 0..20 {
        histogram!("bench_step_seconds", "step" => route.to_string()).record(0.01);
    }
}

/// Answers with the worker's pid.
#[api_operation(summary = "The worker's pid")]
async fn ok() -> web::Json<u32> {
    web::Json(std::process::id())
}

#[serve_common::main]
async fn main() -> std::io::Result<()> {
    record_series();
    actix::serve(|app| app.service(actix::resource("/ok").route(actix::get().to(ok)))).await
}
