//! The example service: a small shop instrumented with [`TallyLayer`] and a business event.
//!
//! | route | behaviour |
//! | --- | --- |
//! | `GET /` | a short text |
//! | `GET /health` | `ok` |
//! | `GET /orders/{id}` | a JSON order; ids from 1000 on do not exist (404) |
//! | `POST /checkout` | takes `{"amount": 12.5, "payment": "card"}`, emits the `checkout` event with the amount |
//! | `GET /flaky` | every 20th call fails with a 500 |
//! | `GET /slow` | answers after 20-120 ms |
//! | `GET /stream` | streams five chunks, 20 ms apart |
//! | `GET /panic` | panics; `CatchPanicLayer` answers 500 |
//! | anything else | 404, recorded under the one route `__unmatched__` |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tally_tower::TallyLayer;
use tower_http::catch_panic::CatchPanicLayer;

/// Label of the `checkout` event: how the order was paid.
pub const PAYMENT_LABEL: &str = "PaymentMethod";
/// Payment methods the `checkout` event distinguishes; anything else is recorded as `other`.
pub const PAYMENT_METHODS: [&str; 3] = ["card", "paypal", "invoice"];

/// Shared by the handlers: business-event handles resolved once, and a request counter.
#[derive(Clone)]
pub struct Shop {
    checkout: tally::EventFamily,
    calls: Arc<AtomicU64>,
}

impl Shop {
    /// Resolve the business events once, at startup.
    pub fn new(tally: &tally::Tally) -> Self {
        Shop {
            checkout: tally.event_family("checkout", &[PAYMENT_LABEL]),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    fn next_call(&self) -> u64 {
        self.calls.fetch_add(1, Ordering::Relaxed)
    }
}

/// The router, with the tally layer outermost and a catch-panic layer inside it.
pub fn router(tally: &tally::Tally) -> Router {
    router_with_faults(tally, None)
}

/// A fault to inject: every `every`-th request whose path starts with `path_prefix` answers
/// 500 instead of being served, as a bad deployment would (the canary gate's test runs one
/// shop with `--fail-path /orders/ --fail-every 10`: 10% 500s on one route).
#[derive(Debug, Clone)]
pub struct Fault {
    /// Requests whose path starts with this are counted.
    pub path_prefix: String,
    /// Every this many of them fails (1: all of them).
    pub every: u64,
}

/// [`router`] with an optional [`Fault`], injected inside the tally layer so that the
/// failures are measured like any other 500.
pub fn router_with_faults(tally: &tally::Tally, fault: Option<Fault>) -> Router {
    let routes = Router::new()
        .route("/", get(|| async { "tally example shop\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .route("/orders/{id}", get(order))
        .route("/checkout", post(checkout))
        .route("/flaky", get(flaky))
        .route("/slow", get(slow))
        .route("/stream", get(stream))
        .route("/panic", get(panics))
        .with_state(Shop::new(tally))
        .layer(CatchPanicLayer::new());
    let routes = match fault {
        Some(f) => {
            let seen = Arc::new(AtomicU64::new(0));
            routes.layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let hit = req.uri().path().starts_with(&f.path_prefix)
                        && (seen.fetch_add(1, Ordering::Relaxed) + 1)
                            .is_multiple_of(f.every.max(1));
                    async move {
                        if hit {
                            (StatusCode::INTERNAL_SERVER_ERROR, "injected fault\n").into_response()
                        } else {
                            next.run(req).await
                        }
                    }
                },
            ))
        }
        None => routes,
    };
    routes.layer(TallyLayer::new(tally))
}

/// An order, as `GET /orders/{id}` returns it.
#[derive(Serialize)]
struct Order {
    id: u64,
    items: u32,
    total: f64,
}

async fn order(Path(id): Path<u64>) -> Result<Json<Order>, StatusCode> {
    if id >= 1000 {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(Json(Order {
        id,
        items: (id % 5) as u32 + 1,
        total: (id % 97) as f64 + 0.99,
    }))
}

/// The body of `POST /checkout`.
#[derive(Deserialize, Serialize)]
pub struct Checkout {
    /// Order amount.
    pub amount: f64,
    /// `card`, `paypal` or `invoice`.
    pub payment: String,
}

async fn checkout(State(shop): State<Shop>, Json(order): Json<Checkout>) -> impl IntoResponse {
    if !order.amount.is_finite() || order.amount <= 0.0 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount must be positive\n",
        );
    }
    // The label value comes from a fixed set: user input never becomes a label as it is.
    let payment = PAYMENT_METHODS
        .into_iter()
        .find(|m| *m == order.payment)
        .unwrap_or("other");
    shop.checkout.with(&[payment]).emit_value(order.amount);
    (StatusCode::CREATED, "order placed\n")
}

async fn flaky(State(shop): State<Shop>) -> impl IntoResponse {
    if shop.next_call() % 20 == 19 {
        (StatusCode::INTERNAL_SERVER_ERROR, "the backend hiccuped\n")
    } else {
        (StatusCode::OK, "fine\n")
    }
}

async fn slow(State(shop): State<Shop>) -> &'static str {
    let jitter = shop.next_call().wrapping_mul(2_654_435_761) % 100;
    tokio::time::sleep(Duration::from_millis(20 + jitter)).await;
    "finally\n"
}

async fn stream() -> Body {
    let chunks = futures_util::stream::unfold(0u32, |n| async move {
        if n == 5 {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let chunk = Bytes::from(format!("chunk {n}\n"));
        Some((Ok::<_, std::io::Error>(chunk), n + 1))
    });
    Body::from_stream(chunks)
}

async fn panics() -> &'static str {
    panic!("the /panic route panics on purpose; CatchPanicLayer turns it into a 500")
}
