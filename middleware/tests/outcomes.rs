//! Outcomes that a well-behaved HTTP server rarely produces, driven through the layer with
//! tower directly: service errors, a request abandoned before its response, panics that unwind
//! through the middleware, gRPC statuses in headers and trailers, 4xx configured as errors,
//! a route classifier for routers other than axum, and the route cardinality limit. Counted by the SDK's `CaptureAgent`.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tally::conventions::{
    CLIENT_ERROR_COUNT, ERROR_COUNT, IN_FLIGHT, OVERFLOW_VALUE, REQUEST_COUNT, RESPONSE_TIME,
    UNMATCHED_ROUTE,
};
use tally_tower::{GrpcClassifier, Route, RoutePatterns, TallyLayer};
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;

use support::{labels, Captured};

const WAIT: Duration = Duration::from_secs(20);

fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

type GrpcBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A gRPC response: one message, then trailers with `code` (or no trailers at all).
fn grpc_response(code: Option<&'static str>) -> Response<GrpcBody> {
    let mut frames = vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))];
    if let Some(code) = code {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(code));
        frames.push(Ok(Frame::trailers(trailers)));
    }
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap()
}

#[tokio::test]
async fn every_way_a_request_can_end_is_counted_once_with_its_outcome() {
    let agent = tally::testing::CaptureAgent::start();
    let tally = tally::Tally::builder()
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        .build()
        .expect("tally builds against the capture agent");
    let fixed =
        |route: &'static str| move |_: &http::Uri, _: &http::Extensions| Route::from_static(route);

    // The service fails instead of answering: class `error`, an error.
    let failing = TallyLayer::new(&tally)
        .route_classifier(fixed("/failing"))
        .layer(service_fn(|_: Request<Empty<Bytes>>| async {
            Err::<Response<Empty<Bytes>>, _>(std::io::Error::other("backend down"))
        }));
    for _ in 0..2 {
        assert!(failing.clone().oneshot(request("/x")).await.is_err());
    }

    // The client goes away before the response: the future is dropped, a 4xx like nginx's 499.
    let never = TallyLayer::new(&tally)
        .route_classifier(fixed("/never"))
        .layer(service_fn(|_: Request<Empty<Bytes>>| {
            std::future::pending::<Result<Response<Empty<Bytes>>, Infallible>>()
        }));
    for _ in 0..3 {
        assert!(never
            .clone()
            .oneshot(request("/x"))
            .now_or_never()
            .is_none());
    }

    // A panic that unwinds through the middleware to a catch-panic layer outside it.
    let panicking = ServiceBuilder::new()
        .layer(CatchPanicLayer::new())
        .layer(TallyLayer::new(&tally).route_classifier(fixed("/panicking")))
        .service(service_fn(|_: Request<Empty<Bytes>>| async {
            if true {
                panic!("handler panicked on purpose");
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }));
    let response = panicking.oneshot(request("/x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);

    // A panic in the inner service's `call` itself, before it returns a future: a server
    // failure as well, not a client that went away.
    let panicking_call = ServiceBuilder::new()
        .layer(CatchPanicLayer::new())
        .layer(TallyLayer::new(&tally).route_classifier(fixed("/panicking-call")))
        .service(service_fn(|_: Request<Empty<Bytes>>| {
            if true {
                panic!("call panicked on purpose");
            }
            std::future::ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
        }));
    let response = panicking_call.oneshot(request("/x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);

    // gRPC: the outcome is in the trailers, or in the headers of a trailers-only response.
    let grpc = TallyLayer::new(&tally)
        .route_classifier(RoutePatterns::new(["/shop.Orders/Get"]))
        .response_classifier(GrpcClassifier)
        .layer(service_fn(|req: Request<Empty<Bytes>>| async move {
            let code = req
                .headers()
                .get("x-code")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok::<_, Infallible>(match code.as_deref() {
                Some("trailers-only-5") => {
                    let mut r = grpc_response(None);
                    r.headers_mut()
                        .insert("grpc-status", HeaderValue::from_static("5"));
                    r
                }
                Some("0") => grpc_response(Some("0")),
                Some("13") => grpc_response(Some("13")),
                _ => grpc_response(None),
            })
        }));
    let grpc_call = |code: &'static str| {
        Request::post("/shop.Orders/Get")
            .header("x-code", code)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    for code in ["0", "0", "13", "trailers-only-5", "none"] {
        let response = grpc.clone().oneshot(grpc_call(code)).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    // A stream the client abandons before the trailers: gRPC's CANCELLED, a 4xx.
    let response = grpc.clone().oneshot(grpc_call("0")).await.unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    drop(body);
    // An unknown gRPC method path: never a label.
    let response = grpc
        .clone()
        .oneshot(
            Request::post("/scanner.Probe/X")
                .header("x-code", "0")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();

    // 4xx counted as errors when configured so.
    let strict = TallyLayer::new(&tally)
        .route_classifier(fixed("/strict"))
        .client_errors_are_errors(true)
        .layer(service_fn(|_: Request<Empty<Bytes>>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(StatusCode::CONFLICT)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        }));
    strict
        .oneshot(request("/x"))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();

    // A careless classifier that labels by raw path: the route limit caps the series.
    let careless = TallyLayer::new(&tally)
        .route_classifier(|uri: &http::Uri, _: &http::Extensions| {
            Route::from(std::sync::Arc::<str>::from(uri.path()))
        })
        .route_limit(2)
        .layer(service_fn(|_: Request<Empty<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));
    for path in ["/raw/a", "/raw/b", "/raw/c", "/raw/d", "/raw/e"] {
        let response = careless.clone().oneshot(request(path)).await.unwrap();
        response.into_body().collect().await.unwrap();
    }

    tally.shutdown();
    let k = 2 + 3 + 1 + 1 + 5 + 1 + 1 + 1 + 5;
    let totals = Captured::wait_for(&agent, REQUEST_COUNT, k, WAIT);

    // (route, method, class, requests, errors, client errors)
    let expected: [(&str, &str, &str, u64, u64, u64); 12] = [
        ("/failing", "GET", "error", 2, 2, 0),
        ("/never", "GET", "4xx", 3, 0, 3),
        ("/panicking", "GET", "error", 1, 1, 0),
        ("/panicking-call", "GET", "error", 1, 1, 0),
        ("/shop.Orders/Get", "POST", "2xx", 2, 0, 0),
        ("/shop.Orders/Get", "POST", "5xx", 2, 2, 0),
        ("/shop.Orders/Get", "POST", "4xx", 2, 0, 2),
        (UNMATCHED_ROUTE, "POST", "2xx", 1, 0, 0),
        ("/strict", "GET", "4xx", 1, 1, 1),
        ("/raw/a", "GET", "2xx", 1, 0, 0),
        ("/raw/b", "GET", "2xx", 1, 0, 0),
        (OVERFLOW_VALUE, "GET", "2xx", 3, 0, 0),
    ];
    for (route, method, class, requests, errors, client_errors) in expected {
        let l = labels(route, method, class);
        assert_eq!(
            totals.counter(REQUEST_COUNT, &l),
            requests,
            "requests {l:?}"
        );
        assert_eq!(
            totals.histogram_count(RESPONSE_TIME, &l),
            requests,
            "latencies {l:?}"
        );
        assert_eq!(totals.counter(ERROR_COUNT, &l), errors, "errors {l:?}");
        assert_eq!(
            totals.counter(CLIENT_ERROR_COUNT, &l),
            client_errors,
            "4xx {l:?}"
        );
    }
    assert_eq!(totals.counter_total(REQUEST_COUNT), k);
    assert_eq!(totals.histogram_total(RESPONSE_TIME), k);
    assert_eq!(totals.gauge_last(IN_FLIGHT, &[]), 0.0);
    // Each family the careless layer records into overflowed on /raw/c, /raw/d and /raw/e.
    assert!(totals.0.label_overflows() >= 3);
}
