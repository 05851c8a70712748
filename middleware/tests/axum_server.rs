//! A real axum server on 127.0.0.1 behind the layer, a real hyper client, and the SDK's
//! `CaptureAgent` at the other end of a real TCP connection: after K requests the counts per
//! dimension set are exact and the latency histograms hold K samples.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use tally::conventions::{
    CLIENT_ERROR_COUNT, ERROR_COUNT, IN_FLIGHT, OTHER_METHOD, REQUEST_COUNT, RESPONSE_TIME,
    UNMATCHED_ROUTE,
};
use tally_tower::TallyLayer;
use tokio::sync::oneshot;
use tower_http::catch_panic::CatchPanicLayer;

use support::{labels, Captured};

/// Per request of the streaming route: three chunks, 20 ms apart.
const STREAM_GAP: Duration = Duration::from_millis(20);
/// Every wait in this test ends by then.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct AppState {
    checkout: tally::Event,
    /// Told when the endless body is dropped (the client went away).
    endless_dropped: std::sync::Arc<std::sync::Mutex<Option<oneshot::Sender<()>>>>,
}

/// Fires its sender when dropped.
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn app(state: AppState, tally: &tally::Tally) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/orders/{id}",
            get(|Path(id): Path<u64>| async move {
                if id == 0 {
                    Err(StatusCode::NOT_FOUND)
                } else {
                    Ok(format!("order {id}"))
                }
            }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/panic",
            get(|| async {
                panic!("handler panicked on purpose");
                #[allow(unreachable_code)] // reason: gives the closure a handler return type
                ""
            }),
        )
        .route(
            "/checkout",
            post(|State(state): State<AppState>, body: Bytes| async move {
                let amount: f64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
                state.checkout.emit_value(amount);
                "paid"
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let chunks = futures_util::stream::unfold(0u32, |n| async move {
                    if n == 3 {
                        return None;
                    }
                    if n > 0 {
                        tokio::time::sleep(STREAM_GAP).await;
                    }
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from(format!("chunk {n}\n"))),
                        n + 1,
                    ))
                });
                Body::from_stream(chunks)
            }),
        )
        .route(
            "/endless",
            get(|State(state): State<AppState>| async move {
                let signal = DropSignal(state.endless_dropped.lock().unwrap().take());
                let chunks = futures_util::stream::unfold(signal, |signal| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from_static(b"tick\n")),
                        signal,
                    ))
                });
                Body::from_stream(chunks)
            }),
        )
        .with_state(state)
        .layer(CatchPanicLayer::new())
        .layer(TallyLayer::new(tally))
}

#[tokio::test]
async fn counts_per_route_method_and_status_class_are_exact_after_k_requests() {
    let agent = tally::testing::CaptureAgent::start();
    let tally = tally::Tally::builder()
        .service("mw-test")
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        .build()
        .expect("tally builds against the capture agent");

    let (dropped_tx, dropped_rx) = oneshot::channel();
    let state = AppState {
        checkout: tally.event("checkout", &[]),
        endless_dropped: std::sync::Arc::new(std::sync::Mutex::new(Some(dropped_tx))),
    };
    let tally_for_app = tally.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        tokio::spawn(async move { axum::serve(listener, app(state, &tally_for_app)).await });

    let client = support::Client::new(addr);
    let mut k = 0u64;
    for _ in 0..20 {
        assert_eq!(client.get("/hello").await, (200, "hello".into()));
        k += 1;
    }
    for id in 1..=10 {
        assert_eq!(client.get(&format!("/orders/{id}")).await.0, 200);
        k += 1;
    }
    for _ in 0..3 {
        assert_eq!(client.get("/orders/0").await.0, 404);
        k += 1;
    }
    for _ in 0..4 {
        assert_eq!(client.get("/fail").await.0, 500);
        k += 1;
    }
    for _ in 0..3 {
        assert_eq!(client.get("/panic").await.0, 500);
        k += 1;
    }
    // A scanner: every path different, none of them a route.
    for i in 0..5 {
        assert_eq!(client.get(&format!("/wp-admin/{i}.php")).await.0, 404);
        k += 1;
    }
    // An invented method on a real route: axum answers 405.
    for _ in 0..2 {
        assert_eq!(client.request("SCAN", "/hello", "").await.0, 405);
        k += 1;
    }
    for amount in ["10.5", "20", "30", "39.5"] {
        assert_eq!(client.request("POST", "/checkout", amount).await.0, 200);
        k += 1;
    }
    for _ in 0..3 {
        let (status, body) = client.get("/stream").await;
        assert_eq!((status, body.lines().count()), (200, 3));
        k += 1;
    }
    // A client that reads one chunk of an endless body and hangs up.
    client.read_one_chunk_and_disconnect("/endless").await;
    k += 1;
    tokio::time::timeout(WAIT, dropped_rx)
        .await
        .expect("the server noticed the disconnect in time")
        .expect("the endless body signals its drop");

    tally.shutdown();
    server.abort();
    let totals = Captured::wait_for(&agent, REQUEST_COUNT, k, WAIT);

    let expected: [(&str, &str, &str, u64); 10] = [
        ("/hello", "GET", "2xx", 20),
        ("/orders/{id}", "GET", "2xx", 10),
        ("/orders/{id}", "GET", "4xx", 3),
        ("/fail", "GET", "5xx", 4),
        ("/panic", "GET", "5xx", 3),
        (UNMATCHED_ROUTE, "GET", "4xx", 5),
        ("/hello", OTHER_METHOD, "4xx", 2),
        ("/checkout", "POST", "2xx", 4),
        ("/stream", "GET", "2xx", 3),
        ("/endless", "GET", "2xx", 1),
    ];
    assert_eq!(expected.iter().map(|e| e.3).sum::<u64>(), k);
    for (route, method, class, n) in expected {
        let l = labels(route, method, class);
        assert_eq!(totals.counter(REQUEST_COUNT, &l), n, "requests {l:?}");
        assert_eq!(
            totals.histogram_count(RESPONSE_TIME, &l),
            n,
            "latencies {l:?}"
        );
        let errors = if class == "5xx" { n } else { 0 };
        assert_eq!(totals.counter(ERROR_COUNT, &l), errors, "errors {l:?}");
        let client_errors = if class == "4xx" { n } else { 0 };
        assert_eq!(
            totals.counter(CLIENT_ERROR_COUNT, &l),
            client_errors,
            "4xx {l:?}"
        );
    }
    // Nothing else was recorded: no raw path, no stray label set.
    assert_eq!(totals.counter_total(REQUEST_COUNT), k);
    assert_eq!(totals.histogram_total(RESPONSE_TIME), k);
    assert_eq!(totals.counter_total(ERROR_COUNT), 7);
    assert_eq!(totals.counter_total(CLIENT_ERROR_COUNT), 10);
    assert_eq!(totals.gauge_last(IN_FLIGHT, &[]), 0.0);
    // Latency runs until the body ends: each streamed response took at least its two gaps
    // (less the histogram's 0.1% precision). A lower bound only: sleeps never end early.
    let stream_min_ns = totals.histogram_min(RESPONSE_TIME, &labels("/stream", "GET", "2xx"));
    assert!(stream_min_ns >= 2 * STREAM_GAP.as_nanos() as u64 * 999 / 1000);
    // The business event, with its amounts.
    assert_eq!(totals.event_count("checkout", &[]), 4);
}
