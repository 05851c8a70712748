//! Tower middleware that records request metrics into [tally].
//!
//! ```no_run
//! use axum::{extract::{Path, State}, routing::{get, post}, Json, Router};
//! use tally_tower::TallyLayer;
//!
//! #[derive(Clone)]
//! struct AppState {
//!     // A business event, resolved once; emitting it is lock- and allocation-free.
//!     checkout: tally::Event,
//! }
//!
//! async fn order(Path(id): Path<u64>) -> String {
//!     format!("order {id}")
//! }
//!
//! async fn checkout(State(state): State<AppState>, Json(amount): Json<f64>) -> &'static str {
//!     state.checkout.emit_value(amount); // count + amount distribution
//!     "ok"
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Sends to the tally agent (TALLY_AGENT_ADDR, default 127.0.0.1:9911).
//!     let tally = tally::Tally::builder().service("orders").build()?;
//!     let state = AppState { checkout: tally.event("checkout", &[]) };
//!
//!     let app = Router::new()
//!         .route("/orders/{id}", get(order))
//!         .route("/checkout", post(checkout))
//!         .with_state(state)
//!         // `Router::layer`, so the layer sees axum's matched route template.
//!         .layer(TallyLayer::new(&tally));
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     tally.shutdown();
//!     Ok(())
//! }
//! ```
//!
//! # What is recorded
//!
//! Per request, labelled `Route`, `Method`, `StatusClass` (names from
//! [`tally::conventions`]):
//!
//! | metric | kind | when |
//! | --- | --- | --- |
//! | `RequestCount` | counter | every request, once |
//! | `ResponseTime` | histogram, ns | every request: from `call` until the body ends or is dropped |
//! | `ErrorCount` | counter | `5xx`, and `error` (the service failed, the body failed mid-stream, a panic) |
//! | `ClientErrorCount` | counter | `4xx`, including clients that left before the response |
//! | `InFlightRequests` | gauge, no labels | up at `call`, down when the request is recorded |
//!
//! 4xx also count in `ErrorCount` with [`TallyLayer::client_errors_are_errors`]. The agent
//! adds the global `ServiceName` and `Environment` dimensions and derives `ErrorRate`.
//!
//! # How it works
//!
//! [`TallyLayer`] resolves the metric families once. [`Tally`] classifies the route
//! ([`ClassifyRoute`]) and the method when a request arrives and starts a guard. The guard
//! travels in the [`ResponseFuture`] and then in the [`ResponseBody`], and records its sample
//! exactly once when it drops: latency is honest for streaming bodies, and a client that
//! disconnects mid-body, a service error or a panic is still one counted request. The status
//! class comes from a [`ClassifyResponse`]: the HTTP status by default, the `grpc-status`
//! header or trailer with [`GrpcClassifier`].
//!
//! Recording resolves a labelled series per request; for label sets seen before this neither
//! locks nor allocates. Label values are bounded by construction: the route is a template
//! (never the raw path; unmatched requests are `__unmatched__`), methods outside the
//! standard nine are `__other__`, and the SDK's per-label cardinality limit
//! ([`TallyLayer::route_limit`]) backs that up.
//!
//! # Business events
//!
//! Handlers record business events through the SDK handle, shared as axum `State` (above) or
//! an `Extension`. Resolve the [`tally::Event`] or [`tally::EventFamily`] once, at startup.
//!
//! # Placement
//!
//! Put the layer outermost (after `CatchPanicLayer`, timeouts and the like in
//! `Router::layer` order), so it sees what the client sees: a caught panic as a `500`, a
//! timeout as the status the timeout layer answers.
#![deny(unsafe_code)]

mod body;
pub mod classify;
mod future;
mod layer;
mod record;
pub mod route;
mod service;

pub use body::ResponseBody;
pub use classify::{ClassifyResponse, GrpcClassifier, HttpClassifier, StatusClass};
pub use future::ResponseFuture;
pub use layer::TallyLayer;
#[cfg(feature = "axum")]
pub use route::MatchedPathRoute;
pub use route::{ClassifyRoute, DefaultRoutes, Route, RoutePatterns};
pub use service::Tally;
