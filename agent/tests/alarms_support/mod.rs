//! Shared by the alarm integration tests: a LocalStack CloudWatch client whose every request
//! is recorded by operation name, hand-built catalogues, and a dashboard checker.

#![allow(dead_code)] // Each test binary uses a different subset of these helpers.

use std::sync::Arc;

use aws_sdk_cloudwatch::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_cloudwatch::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_cloudwatch::error::BoxError;
use aws_sdk_cloudwatch::Client;
use parking_lot::Mutex;
use tally_agent::catalog::{Catalog, CatalogMetric};

/// Every request sent, by operation name (`PutMetricAlarm`, ...), in order.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<String>>>);

impl CallLog {
    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.0.lock().clear();
    }
    /// How many requests of `op` were sent since the last clear.
    pub fn count(&self, op: &str) -> usize {
        self.0.lock().iter().filter(|o| *o == op).count()
    }
    /// Requests that change CloudWatch (Put*, Delete*), since the last clear.
    pub fn writes(&self) -> Vec<String> {
        self.0
            .lock()
            .iter()
            .filter(|o| o.starts_with("Put") || o.starts_with("Delete"))
            .cloned()
            .collect()
    }
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "CallLog"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // RPC v2 CBOR: POST /service/GraniteServiceVersion20100801/operation/<Op>
        let uri = context.request().uri();
        let op = uri.rsplit('/').next().unwrap_or_default().to_owned();
        self.0.lock().push(op);
        Ok(())
    }
}

/// The shared LocalStack helpers of the other integration tests (endpoint, health check,
/// client configuration).
#[path = "../common/cloudwatch.rs"]
mod localstack;

pub use localstack::endpoint;

/// A client for LocalStack that records its calls. Fails (never skips) when LocalStack does
/// not answer.
pub fn localstack_client() -> (Client, CallLog) {
    localstack::require_localstack();
    let log = CallLog::default();
    let conf = localstack::client_config(&endpoint())
        .interceptor(log.clone())
        .build();
    (Client::from_conf(conf), log)
}

/// A suffix that keeps concurrent and repeated runs apart.
pub fn unique() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn fixed(k: &str, v: &str) -> (String, Option<String>) {
    (k.to_owned(), Some(v.to_owned()))
}

/// What the agent publishes for an instrumented HTTP service: the middleware's metrics per
/// Route/Method/StatusClass, rollups per route and per service, the derived ErrorRate, one
/// business event, and the agent's self-metrics (`Component=agent`).
pub fn http_service_catalog(namespace: &str, service: &str, env: &str) -> Catalog {
    let svc = vec![fixed("Environment", env), fixed("ServiceName", service)];
    let route = vec![
        fixed("Environment", env),
        ("Route".to_owned(), None),
        fixed("ServiceName", service),
    ];
    let full = vec![
        fixed("Environment", env),
        ("Method".to_owned(), None),
        ("Route".to_owned(), None),
        fixed("ServiceName", service),
        ("StatusClass".to_owned(), None),
    ];
    let agent = vec![
        fixed("Component", "agent"),
        fixed("Environment", env),
        fixed("ServiceName", service),
    ];
    let m = |name: &str, unit: &str, sets: Vec<Vec<(String, Option<String>)>>| CatalogMetric {
        name: name.to_owned(),
        unit: unit.to_owned(),
        dimension_sets: sets,
    };
    let http = vec![full, route.clone(), svc.clone()];
    Catalog {
        namespace: namespace.to_owned(),
        metrics: vec![
            m("RequestCount", "Count", http.clone()),
            m("ErrorCount", "Count", http.clone()),
            m("ResponseTime", "Milliseconds", http),
            m("ErrorRate", "Percent", vec![route, svc.clone()]),
            m("OrdersPlaced", "Count", vec![svc]),
            m("tally_samples_dropped_total", "Count", vec![agent.clone()]),
            m("tally_publish_errors_total", "Count", vec![agent]),
        ],
    }
}

/// Checks that every metric a dashboard body names is one the catalogue publishes, with the
/// same dimensions: explicit metric lines by `Catalog::publishes`, SEARCH expressions by their
/// schema (exactly a published dimension set) and their fixed `Name="value"` terms.
/// Returns how many metric references were checked.
pub fn assert_dashboard_matches_catalog(body: &serde_json::Value, catalog: &Catalog) -> usize {
    let mut checked = 0;
    let widgets = body["widgets"].as_array().expect("a widgets array");
    for w in widgets {
        let Some(lines) = w["properties"]["metrics"].as_array() else {
            continue;
        };
        for line in lines {
            let items = line.as_array().expect("a metric line is an array");
            if let Some(expr) = items.first().and_then(|o| o["expression"].as_str()) {
                if let Some(search) = expr.strip_prefix("SEARCH('") {
                    check_search(search, catalog);
                    checked += 1;
                }
                continue;
            }
            let strings: Vec<&str> = items.iter().filter_map(|v| v.as_str()).collect();
            assert!(
                strings.len() >= 2 && strings.len().is_multiple_of(2),
                "bad line {line}"
            );
            assert_eq!(strings[0], catalog.namespace, "namespace of {line}");
            let dims: Vec<(String, String)> = strings[2..]
                .chunks(2)
                .map(|c| (c[0].to_owned(), c[1].to_owned()))
                .collect();
            assert!(
                catalog.publishes(strings[1], &dims),
                "the dashboard names {} {dims:?}, which the agent never publishes",
                strings[1]
            );
            checked += 1;
        }
    }
    checked
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').replace("\\\"", "\"")
}

fn check_search(search: &str, catalog: &Catalog) {
    let close = search.find('}').expect("a schema");
    let schema: Vec<String> = search[1..close].split(',').map(unquote).collect();
    assert_eq!(schema[0], catalog.namespace, "namespace of SEARCH {search}");
    let end = search.find("', ").expect("end of the search string");
    let terms = &search[close + 1..end];
    let mut metric = None;
    let mut values = Vec::new();
    for term in terms.split_whitespace() {
        let (k, v) = term.split_once('=').expect("Name=value terms");
        let (k, v) = (unquote(k), unquote(v));
        if k == "MetricName" {
            metric = Some(v);
        } else {
            values.push((k, v));
        }
    }
    let metric = metric.expect("a MetricName term");
    let m = catalog
        .metric(&metric)
        .unwrap_or_else(|| panic!("SEARCH names unpublished metric {metric}"));
    let names: Vec<&str> = schema[1..].iter().map(String::as_str).collect();
    let matching = m.dimension_sets.iter().find(|set| {
        set.len() == names.len() && set.iter().all(|(k, _)| names.contains(&k.as_str()))
    });
    let set = matching.unwrap_or_else(|| {
        panic!("SEARCH over {names:?} for {metric}: not a published dimension set")
    });
    for (k, fixed) in set {
        if let Some(f) = fixed {
            assert!(
                values.contains(&(k.clone(), f.clone())),
                "SEARCH for {metric} must filter {k}={f}: {search}"
            );
        }
    }
}
