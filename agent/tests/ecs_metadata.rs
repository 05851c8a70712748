//! ECS task metadata -> dimensions, against a real HTTP server on 127.0.0.1 that answers the
//! way the ECS agent and Fargate do (AWS's documented example responses), and the ways they
//! can fail: errors, garbage, oversized answers, stalls, nothing listening.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tally_agent::ecs::{task_dimensions_from, EcsConfig, EcsDimension, TaskDimensions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const EC2: &str = include_str!("fixtures/ecs/task-metadata-v4-ec2.json");
const FARGATE: &str = include_str!("fixtures/ecs/task-metadata-v4-fargate.json");

/// The container path ECS hands out (`/v4/<container id>`); only `<that>/task` answers 200.
const CONTAINER_PATH: &str = "/v4/ee08638adaaf009d78c248913f629e38-2495160603";

/// A hang guard for each resolution (never a performance threshold): far above the worst
/// case of attempts x timeout + back-offs used here.
const HANG_GUARD: Duration = Duration::from_secs(30);

#[derive(Clone)]
enum Behaviour {
    /// 200 with this body at `<container>/task`, 404 elsewhere.
    Serve(&'static str),
    /// This status for the first `n` requests, then `Serve(body)`.
    FailFirst(usize, StatusCode, &'static str),
    /// Always this status.
    Status(StatusCode),
    /// 200 with a body of this many bytes of JSON-ish filler.
    Huge(usize),
    /// Accept, read the request, never answer.
    Stall,
    /// Answer headers and half the body, then stall (raw TCP, not hyper).
    StallMidBody,
}

struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Server {
    fn base_uri(&self) -> String {
        format!("http://{}{CONTAINER_PATH}", self.addr)
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve(behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let behaviour = behaviour.clone();
            let counter = counter.clone();
            if let Behaviour::StallMidBody = behaviour {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                content-length: 1000\r\n\r\n{\"Cluster\":\"def";
                    let _ = stream.write_all(head.as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                });
                continue;
            }
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let behaviour = behaviour.clone();
                    async move { Ok::<_, Infallible>(answer(&behaviour, n, &req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, hits }
}

async fn answer(behaviour: &Behaviour, n: usize, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let status = |s: StatusCode| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"error")));
        *r.status_mut() = s;
        r
    };
    if req.uri().path() != format!("{CONTAINER_PATH}/task") {
        return status(StatusCode::NOT_FOUND);
    }
    let ok = |body: Bytes| {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap()
    };
    match behaviour {
        Behaviour::Serve(body) => ok(Bytes::from_static(body.as_bytes())),
        Behaviour::FailFirst(k, s, _) if n < *k => status(*s),
        Behaviour::FailFirst(_, _, body) => ok(Bytes::from_static(body.as_bytes())),
        Behaviour::Status(s) => status(*s),
        Behaviour::Huge(len) => ok(Bytes::from(vec![b' '; *len])),
        Behaviour::Stall | Behaviour::StallMidBody => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            status(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

fn all_dimensions(timeout_ms: u64, attempts: u32) -> EcsConfig {
    let text = format!(
        "dimensions = [\"ClusterName\", \"TaskDefinitionFamily\", \"EcsServiceName\", \
         \"AvailabilityZone\", \"LaunchType\"]\ntimeout_ms = {timeout_ms}\nattempts = {attempts}\n"
    );
    let config: EcsConfig = toml::from_str(&text).unwrap();
    assert_eq!(config.dimensions, EcsDimension::ALL.to_vec());
    config
}

async fn resolve(config: &EcsConfig, uri: Option<&str>) -> TaskDimensions {
    tokio::time::timeout(HANG_GUARD, task_dimensions_from(config, uri))
        .await
        .expect("resolving ECS dimensions must end on its own, bounded by timeout x attempts")
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn dimensions_come_out_right_from_aws_documented_ec2_and_fargate_metadata() {
    let config = all_dimensions(1000, 3);

    let ec2 = serve(Behaviour::Serve(EC2)).await;
    let got = resolve(&config, Some(&ec2.base_uri())).await;
    assert_eq!(
        got.dimensions,
        pairs(&[
            ("ClusterName", "default"),
            ("TaskDefinitionFamily", "curltest"),
            ("EcsServiceName", "MyService"),
            ("AvailabilityZone", "us-west-2d"),
            ("LaunchType", "EC2"),
        ])
    );
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    assert_eq!(ec2.hits(), 1);

    // Fargate reports the cluster as a full ARN and (in AWS's example) no ServiceName; a
    // trailing slash on the variable must not matter.
    let fargate = serve(Behaviour::Serve(FARGATE)).await;
    let got = resolve(&config, Some(&format!("{}/", fargate.base_uri()))).await;
    assert_eq!(
        got.dimensions,
        pairs(&[
            ("ClusterName", "default"),
            ("TaskDefinitionFamily", "curltest"),
            ("AvailabilityZone", "us-west-2a"),
            ("LaunchType", "FARGATE"),
        ])
    );
    assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
    assert!(
        got.warnings[0].contains("no usable ServiceName field")
            && got.warnings[0].contains("EcsServiceName dimension"),
        "{}",
        got.warnings[0]
    );
    assert_eq!(fargate.hits(), 1);

    // Only the configured dimensions, in the configured order.
    let some: EcsConfig = toml::from_str("dimensions = [\"LaunchType\", \"ClusterName\"]").unwrap();
    let got = resolve(&some, Some(&fargate.base_uri())).await;
    assert_eq!(
        got.dimensions,
        pairs(&[("LaunchType", "FARGATE"), ("ClusterName", "default")])
    );
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
}

#[tokio::test]
async fn a_briefly_failing_endpoint_is_retried_until_it_answers() {
    let config = all_dimensions(1000, 3);
    let server = serve(Behaviour::FailFirst(
        2,
        StatusCode::SERVICE_UNAVAILABLE,
        FARGATE,
    ))
    .await;
    let got = resolve(&config, Some(&server.base_uri())).await;
    assert_eq!(got.dimensions.len(), 4, "{got:?}");
    assert_eq!(server.hits(), 3);

    let throttled = serve(Behaviour::FailFirst(1, StatusCode::TOO_MANY_REQUESTS, EC2)).await;
    let got = resolve(&config, Some(&throttled.base_uri())).await;
    assert_eq!(got.dimensions.len(), 5, "{got:?}");
    assert_eq!(throttled.hits(), 2);
}

#[tokio::test]
async fn broken_missing_or_slow_metadata_yields_one_warning_and_no_dimensions() {
    // Short timeouts keep the stalled cases quick; 2 attempts shows the retry bound.
    let config = all_dimensions(200, 2);

    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let not_listening = format!("http://{nobody}{CONTAINER_PATH}");

    let cases = [
        (
            "unset",
            Endpoint::Unset,
            "ECS_CONTAINER_METADATA_URI_V4 is not set",
        ),
        (
            "not http",
            Endpoint::Uri("https://169.254.170.2/v4/x".into()),
            "is not an http:// URI",
        ),
        (
            "nothing listening",
            Endpoint::Uri(not_listening),
            "failed in 2 attempts",
        ),
        (
            "server error every time",
            Endpoint::Server(Behaviour::Status(StatusCode::INTERNAL_SERVER_ERROR), 2),
            "answered HTTP 500 Internal Server Error (after 2 attempts)",
        ),
        (
            "not found is final",
            Endpoint::Server(Behaviour::Status(StatusCode::NOT_FOUND), 1),
            "answered HTTP 404 Not Found (after 1 attempt)",
        ),
        (
            "not JSON",
            Endpoint::Server(Behaviour::Serve("<html>proxy error</html>"), 1),
            "not task metadata JSON",
        ),
        (
            "JSON of the wrong shape",
            Endpoint::Server(Behaviour::Serve("{\"Cluster\": 42}"), 1),
            "not task metadata JSON",
        ),
        (
            "oversized",
            Endpoint::Server(Behaviour::Huge(2 << 20), 2),
            "reading the answer failed",
        ),
        (
            "stalls before answering",
            Endpoint::Server(Behaviour::Stall, 2),
            "no complete answer within 200ms in 2 attempts",
        ),
        (
            "stalls mid-body",
            Endpoint::Server(Behaviour::StallMidBody, 2),
            "no complete answer within 200ms in 2 attempts",
        ),
    ];

    for (case, endpoint, needle) in cases {
        let (server, expected_hits, uri) = match endpoint {
            Endpoint::Unset => (None, None, None),
            Endpoint::Uri(uri) => (None, None, Some(uri)),
            Endpoint::Server(behaviour, hits) => {
                let server = serve(behaviour).await;
                let uri = server.base_uri();
                (Some(server), Some(hits), Some(uri))
            }
        };
        let got = resolve(&config, uri.as_deref()).await;
        assert!(got.dimensions.is_empty(), "{case}: {got:?}");
        assert_eq!(got.warnings.len(), 1, "{case}: {:?}", got.warnings);
        let w = &got.warnings[0];
        assert!(w.contains(needle), "{case}: {w}");
        assert!(
            w.contains(
                "ClusterName, TaskDefinitionFamily, EcsServiceName, AvailabilityZone, LaunchType"
            ),
            "{case}: the warning names the dimensions left out: {w}"
        );
        if let (Some(server), Some(n)) = (server, expected_hits) {
            assert_eq!(server.hits(), n, "{case}: requests made");
        }
    }
}

/// Where a broken-metadata case points the agent.
enum Endpoint {
    /// `ECS_CONTAINER_METADATA_URI_V4` unset.
    Unset,
    /// A URI with no test server behind it.
    Uri(String),
    /// A test server, and how many requests the agent must make to it.
    Server(Behaviour, usize),
}

#[test]
fn alarms_are_not_planned_without_the_ecs_dimensions_the_agent_publishes_with() {
    // Outside a task (no metadata endpoint) the agent cannot know the values it would add;
    // alarms planned without them would watch series nobody publishes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-agent"))
        .args([
            "alarms",
            "plan",
            "--set",
            "ecs.dimensions=[\"ClusterName\"]",
        ])
        .args(["--set", "ecs.attempts=1", "--set", "ecs.timeout_ms=200"])
        .args(["--set", "publish.endpoint_url=http://127.0.0.1:9"])
        .env_remove("TALLY_CONFIG")
        .env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("the agent binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[\"ClusterName\"]")
            && err.contains("could not be read from the ECS task metadata"),
        "{err}"
    );
}
