//! The shipped Node example (`examples/node-express`, the `node-web` container of the ECS
//! files) as a real process next to the agent: Express answers real HTTP requests, hot-shots
//! sends StatsD to the agent's UDP receiver, and what the agent publishes (stdout sink, JSON
//! lines) is tally-tower's request metrics for every request sent, with the same names and
//! dimensions, so the agent's ErrorRate covers the Node service.
//!
//! Needs `examples/node-express/node_modules` (`scripts/statsd-clients.sh`, which
//! `scripts/test.sh` runs).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{prom, total, wait_for_metric, Agent};

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/node-express")
}

fn require_example() {
    let d = example_dir();
    assert!(
        d.join("node_modules/express").is_dir() && d.join("node_modules/hot-shots").is_dir(),
        "the Node example's packages are not installed: run scripts/statsd-clients.sh (scripts/test.sh does)"
    );
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example service as a child process, its stderr drained by a thread.
struct Node {
    child: Child,
    port: u16,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Node {
    /// Starts `node server.js` on a port the system picks and waits (at most 30 s) for the
    /// `{"listening":<port>}` line.
    fn start(statsd_port: u16) -> Node {
        let mut child = Command::new("node")
            .arg("server.js")
            .current_dir(example_dir())
            .env("PORT", "0")
            .env("STATSD_HOST", "127.0.0.1")
            .env("STATSD_PORT", statsd_port.to_string())
            .env("SERVICE_NAME", "shop-web")
            .env("ENVIRONMENT", "test")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts (Node 18 or later on PATH)");
        let mut err = child.stderr.take().unwrap();
        let stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep draining
        });
        let mut node = Node {
            child,
            port: 0,
            stderr,
        };
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(e) => {
                let _ = node.child.kill();
                let _ = node.child.wait();
                let err = node.stderr.take().unwrap().join().unwrap();
                panic!("server.js printed no listening line ({e}):\n{err}");
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        node.port = v["listening"].as_u64().expect("listening port") as u16;
        node
    }

    /// Sends SIGTERM and waits (at most 30 s) for exit; returns (success, stderr).
    fn terminate(mut self) -> (bool, String) {
        // SAFETY: kill(2) with the pid of our own child; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM delivered to node");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = self.stderr.take().unwrap().join().unwrap();
        (status.success(), err)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on its own connection; returns the status code.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> u16 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"))
}

/// One kind of request the test sends: `n` times, each answered `status`.
struct Load {
    method: &'static str,
    path: fn(u32) -> String,
    body: Option<&'static str>,
    status: u16,
    n: u32,
    route: &'static str,
    class: &'static str,
}

#[test]
fn the_node_express_example_reports_every_request_to_the_agent_as_tally_tower_metrics() {
    require_example();
    let statsd_port = free_udp_port();
    let udp = format!("statsd.udp_addr=127.0.0.1:{statsd_port}");
    // As examples/ecs/agent.toml: also per route without StatusClass, where ErrorRate is derived.
    let agent = Agent::start(&[
        "--set",
        "statsd.enabled=true",
        "--set",
        &udp,
        "--set",
        "aggregate.rollups=[{ drop = [\"StatusClass\"] }]",
    ]);
    let node = Node::start(statsd_port);

    let loads = [
        Load {
            method: "GET",
            path: |_| "/orders/1".into(),
            body: None,
            status: 200,
            n: 40,
            route: "/orders/{id}",
            class: "2xx",
        },
        Load {
            method: "GET",
            path: |i| format!("/orders/{}", 1000 + i),
            body: None,
            status: 404,
            n: 12,
            route: "/orders/{id}",
            class: "4xx",
        },
        Load {
            method: "POST",
            path: |_| "/orders".into(),
            body: Some(r#"{"item":"book","quantity":2}"#),
            status: 201,
            n: 10,
            route: "/orders",
            class: "2xx",
        },
        Load {
            method: "POST",
            path: |_| "/orders".into(),
            body: Some(r#"{"item":""}"#),
            status: 400,
            n: 3,
            route: "/orders",
            class: "4xx",
        },
        Load {
            method: "GET",
            path: |i| format!("/payments/{i}"),
            body: None,
            status: 500,
            n: 8,
            route: "/payments/{id}",
            class: "5xx",
        },
        Load {
            method: "GET",
            path: |i| format!("/no/such/page/{i}"),
            body: None,
            status: 404,
            n: 5,
            route: "__unmatched__",
            class: "4xx",
        },
    ];
    // Interleaved, as real traffic is.
    let rounds = loads.iter().map(|l| l.n).max().unwrap();
    for i in 0..rounds {
        for l in loads.iter().filter(|l| i < l.n) {
            let got = http(node.port, l.method, &(l.path)(i), l.body);
            assert_eq!(got, l.status, "{} {}", l.method, (l.path)(i));
        }
    }
    let (ok, node_err) = node.terminate();
    assert!(ok, "server.js exits 0 on SIGTERM:\n{node_err}");
    assert!(
        !node_err.contains("statsd:"),
        "hot-shots reported no error:\n{node_err}"
    );

    // Per request: RequestCount and ResponseTime, plus ErrorCount or ClientErrorCount.
    let lines: u64 = loads
        .iter()
        .map(|l| u64::from(l.n) * if l.class == "2xx" { 2 } else { 3 })
        .sum();
    let read = wait_for_metric(
        &agent,
        "tally_agent_statsd_lines_total{kind=\"metric\",listener=\"udp\"}",
        lines,
        Duration::from_secs(60),
    );
    assert_eq!(read, lines, "every line server.js sent was read");
    let m = agent.admin_get("/metrics");
    assert_eq!(
        prom(
            &m,
            "tally_agent_statsd_packets_total{listener=\"udp\",outcome=\"kernel_dropped\"}"
        ),
        0,
        "{m}"
    );
    let dropped: u64 = m
        .lines()
        .filter(|l| l.starts_with("tally_agent_dropped_samples_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(dropped, 0, "nothing dropped:\n{m}");
    let (ok, out, err) = agent.terminate();
    assert!(ok, "the agent exits cleanly on SIGTERM:\n{err}");

    // Every series carries the service and environment the Node container was given.
    let published: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["metric"] == "RequestCount")
        .collect();
    assert!(!published.is_empty(), "RequestCount published:\n{out}");
    for v in &published {
        assert_eq!(v["dimensions"]["ServiceName"], "shop-web", "{v}");
        assert_eq!(v["dimensions"]["Environment"], "test", "{v}");
    }

    // The full series, {Route, Method, StatusClass}: exact per load (loads sharing a series add).
    let mut want: std::collections::BTreeMap<(&str, &str, &str), u32> = Default::default();
    for l in &loads {
        *want.entry((l.route, l.method, l.class)).or_default() += l.n;
    }
    for ((route, method, class), n) in &want {
        let dims = [
            ("Route", *route),
            ("Method", *method),
            ("StatusClass", *class),
        ];
        let n = f64::from(*n);
        let series = format!("{method} {route} {class}");
        assert_eq!(
            total(&out, "RequestCount", &dims, "sum"),
            n,
            "RequestCount {series}"
        );
        assert_eq!(
            total(&out, "ResponseTime", &dims, "count"),
            n,
            "ResponseTime SampleCount {series}"
        );
        let (errors, client_errors) = match *class {
            "5xx" => (n, 0.0),
            "4xx" => (0.0, n),
            _ => (0.0, 0.0),
        };
        assert_eq!(
            total(&out, "ErrorCount", &dims, "sum"),
            errors,
            "ErrorCount {series}"
        );
        assert_eq!(
            total(&out, "ClientErrorCount", &dims, "sum"),
            client_errors,
            "ClientErrorCount {series}"
        );
    }
    let rt = out
        .lines()
        .find(|l| l.contains("\"metric\":\"ResponseTime\""))
        .expect("ResponseTime published");
    assert!(
        rt.contains("\"unit\":\"Milliseconds\""),
        "a timer in milliseconds, as tally-tower's: {rt}"
    );

    // The rollup without StatusClass, where the agent derives ErrorRate: every request of a
    // route counted once, and ErrorRate 100 for the route that always fails, 0 for the route
    // whose only failures are 4xx (client errors do not page), in every period.
    for (route, method, requests, rate) in [
        ("/payments/{id}", "GET", 8.0, 100.0),
        ("/orders/{id}", "GET", 52.0, 0.0),
    ] {
        let dims = [("Route", route), ("Method", method)];
        assert_eq!(
            total(&out, "RequestCount", &dims, "sum"),
            requests,
            "{route}"
        );
        let rates: Vec<f64> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["metric"] == "ErrorRate")
            .filter(|v| v["dimensions"]["Route"] == route && v["dimensions"]["Method"] == method)
            .filter(|v| v["dimensions"].get("StatusClass").is_none())
            .map(|v| v["sum"].as_f64().unwrap())
            .collect();
        assert!(!rates.is_empty(), "ErrorRate published for {route}:\n{out}");
        assert!(
            rates.iter().all(|r| *r == rate),
            "ErrorRate of {route}: {rates:?}, want {rate} in every period"
        );
    }
}
