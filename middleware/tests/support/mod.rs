//! Test support: a hyper client and readers of what the capture agent received.

#![allow(dead_code)] // reason: each test binary uses a different part of this module

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tally::conventions::{METHOD, ROUTE, STATUS_CLASS};
use tokio::net::TcpStream;

/// The `Route`, `Method`, `StatusClass` label set the middleware records under.
pub fn labels<'a>(route: &'a str, method: &'a str, class: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![(ROUTE, route), (METHOD, method), (STATUS_CLASS, class)]
}

/// A hyper HTTP/1 client opening one connection per request.
pub struct Client {
    addr: SocketAddr,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client { addr }
    }

    async fn connect(&self) -> http1::SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(self.addr).await.expect("server accepts");
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("http/1 handshake");
        tokio::spawn(conn);
        sender
    }

    /// GET `path`; the status and the whole body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, "").await
    }

    /// `method` `path` with `body`; the status and the whole body.
    pub async fn request(&self, method: &str, path: &str, body: &'static str) -> (u16, String) {
        let send = async {
            let mut sender = self.connect().await;
            let request = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, "localhost")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            let response = sender.send_request(request).await.expect("response");
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(20), send)
            .await
            .expect("request answered in time")
    }

    /// GET `path`, read the first body chunk, then close the connection mid-body.
    pub async fn read_one_chunk_and_disconnect(&self, path: &str) {
        let read = async {
            let stream = TcpStream::connect(self.addr).await.expect("server accepts");
            let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .expect("http/1 handshake");
            let conn = tokio::spawn(conn);
            let request = http::Request::get(path)
                .header(http::header::HOST, "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let mut response = sender.send_request(request).await.expect("response");
            assert_eq!(response.status(), 200);
            let frame = response.body_mut().frame().await;
            assert!(matches!(frame, Some(Ok(_))), "one chunk arrives");
            drop(response);
            drop(sender);
            conn.abort();
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("first chunk in time");
    }
}

/// What the capture agent received, with sums across label sets.
pub struct Captured(pub tally::testing::Totals);

impl Captured {
    /// Wait (at most `wait`) until `counter` sums to `expected` across all label sets.
    pub fn wait_for(
        agent: &tally::testing::CaptureAgent,
        counter: &str,
        expected: u64,
        wait: Duration,
    ) -> Self {
        agent.wait_for(wait, |t| Captured::sum_counters(t, counter) >= expected);
        Captured(agent.totals())
    }

    fn sum_counters(totals: &tally::testing::Totals, name: &str) -> u64 {
        totals
            .series
            .iter()
            .filter(|(key, _)| key.name == name)
            .map(|(_, (_, value))| match value {
                tally::wire::SeriesValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    }

    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0.counter(name, labels)
    }

    pub fn counter_total(&self, name: &str) -> u64 {
        Captured::sum_counters(&self.0, name)
    }

    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0.histogram(name, labels).map_or(0, |h| h.len())
    }

    pub fn histogram_min(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .histogram(name, labels)
            .expect("histogram recorded")
            .min()
    }

    pub fn histogram_total(&self, name: &str) -> u64 {
        self.0
            .series
            .iter()
            .filter(|(key, _)| key.name == name)
            .map(|(_, (_, value))| match value {
                tally::wire::SeriesValue::Histogram { histogram, .. } => histogram.len(),
                _ => 0,
            })
            .sum()
    }

    pub fn gauge_last(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.gauge(name, labels).expect("gauge recorded")
    }

    pub fn event_count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0.event_count(name, labels)
    }
}
