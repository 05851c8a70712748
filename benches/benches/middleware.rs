//! What does the middleware add to one request, for tally-tower and its peers, side by side?
//!
//! Group `middleware_request`: one `GET /orders/{id}` through a hello-world axum `Router`
//! (routing, handler, the whole response body), called in process with `oneshot`: bare, with
//! tally-tower, with axum-prometheus 0.8, with tower-http's `TraceLayer` under an INFO
//! subscriber. No sockets, so the difference between two lines is the layer's own cost per
//! request, which the HTTP benchmark (`scripts/bench-middleware.sh`) cannot resolve on a busy
//! machine.
//!
//! Run: `cargo bench -p tally-benches --bench middleware -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use tower::ServiceExt;

async fn order(Path(id): Path<u32>) -> String {
    format!("order {id}")
}

fn router() -> Router {
    Router::new().route("/orders/{id}", get(order))
}

fn middleware_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _entered = runtime.enter();

    let agent = tally::testing::CaptureAgent::start();
    let tally = tally::Tally::builder()
        .service("bench")
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        .build()
        .expect("tally builds against the capture agent");
    let (prometheus, handle) = axum_prometheus::PrometheusMetricLayer::pair();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish(),
    );

    let configurations = [
        ("bare", router()),
        (
            "tally",
            router().layer(tally_tower::TallyLayer::new(&tally)),
        ),
        ("axum_prometheus", router().layer(prometheus)),
        (
            "tower_http_trace",
            router().layer(tower_http::trace::TraceLayer::new_for_http()),
        ),
    ];
    let mut group = c.benchmark_group("middleware_request");
    for (name, app) in configurations {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let request = axum::http::Request::get("/orders/42")
                        .body(Body::empty())
                        .expect("a valid request");
                    let response = app.clone().oneshot(request).await.expect("infallible");
                    let body = axum::body::to_bytes(response.into_body(), 1024).await;
                    black_box(body.expect("a small body"))
                })
            })
        });
    }
    group.finish();
    drop(handle);
    tally.shutdown();
}

criterion_group!(benches, middleware_request);
criterion_main!(benches);
