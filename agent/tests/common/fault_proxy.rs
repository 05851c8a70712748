//! A loopback HTTP fault proxy in front of a CloudWatch endpoint (LocalStack): it forwards,
//! or answers `Throttling` (400), `ServiceUnavailable` (503), closes connections before any
//! answer, or refuses requests carrying a poisoned datum, as the test switches it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;

/// Forward every request to the upstream.
pub const FORWARD: u8 = 0;
/// Answer 400 `Throttling`.
pub const THROTTLE: u8 = 1;
/// Answer 503 `ServiceUnavailable`.
pub const UNAVAILABLE: u8 = 2;
/// Close each connection before answering.
pub const CLOSE: u8 = 3;
/// Refuse requests whose body contains `Poison` with `InvalidParameterValue`.
pub const REJECT_POISON: u8 = 4;

/// CBOR text string.
fn cbor_text(out: &mut Vec<u8>, s: &str) {
    if s.len() < 24 {
        out.push(0x60 + s.len() as u8);
    } else {
        out.push(0x78);
        out.push(s.len() as u8);
    }
    out.extend_from_slice(s.as_bytes());
}

/// An rpc-v2-cbor error answer.
fn error_answer(status: u16, code: &str, message: &str) -> hyper::Response<Full<Bytes>> {
    let mut body = vec![0xa2];
    cbor_text(&mut body, "__type");
    cbor_text(&mut body, &format!("com.amazonaws.cloudwatch#{code}"));
    cbor_text(&mut body, "message");
    cbor_text(&mut body, message);
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/cbor")
        .header("smithy-protocol", "rpc-v2-cbor")
        .header("x-amzn-query-error", format!("{code};Sender"))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A loopback HTTP proxy in front of `upstream` (LocalStack) whose behaviour the test
/// switches through `mode`.
pub async fn start_proxy(upstream: String, mode: Arc<AtomicU8>) -> SocketAddr {
    start_counting_proxy(upstream, mode, Arc::new(AtomicU64::new(0))).await
}

/// Like [`start_proxy`], counting every connection and request it sees in `requests`.
pub async fn start_counting_proxy(
    upstream: String,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            if mode.load(Ordering::SeqCst) == CLOSE {
                requests.fetch_add(1, Ordering::SeqCst);
                drop(stream); // The connection closes before any answer.
                continue;
            }
            let (mode, client, upstream, requests) = (
                mode.clone(),
                client.clone(),
                upstream.clone(),
                requests.clone(),
            );
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (mode, client, upstream) =
                            (mode.clone(), client.clone(), upstream.clone());
                        requests.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let answer = match mode.load(Ordering::SeqCst) {
                                // A connection kept alive from an earlier mode: fail the
                                // request without an answer (hyper drops the connection), as
                                // a new connection would be, instead of forwarding it.
                                CLOSE => {
                                    return Err(std::io::Error::other(
                                        "connection closed by the fault proxy",
                                    ))
                                }
                                THROTTLE => error_answer(400, "Throttling", "Rate exceeded"),
                                UNAVAILABLE => error_answer(503, "ServiceUnavailable", "try later"),
                                REJECT_POISON if body.windows(6).any(|w| w == b"Poison") => {
                                    error_answer(
                                        400,
                                        "InvalidParameterValue",
                                        "the value of Poison is invalid",
                                    )
                                }
                                _ => {
                                    let uri = format!("{upstream}{}", parts.uri.path());
                                    let mut fwd =
                                        hyper::Request::builder().method(parts.method).uri(uri);
                                    for (k, v) in &parts.headers {
                                        fwd = fwd.header(k, v);
                                    }
                                    match client.request(fwd.body(Full::new(body)).unwrap()).await {
                                        Ok(res) => {
                                            let (p, b) = res.into_parts();
                                            let b = b
                                                .collect()
                                                .await
                                                .map(|b| b.to_bytes())
                                                .unwrap_or_default();
                                            hyper::Response::from_parts(p, Full::new(b))
                                        }
                                        Err(_) => {
                                            error_answer(502, "BadGateway", "upstream unreachable")
                                        }
                                    }
                                }
                            };
                            Ok::<_, std::io::Error>(answer)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
