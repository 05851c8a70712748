//! One CloudWatch dashboard per service and environment, built from the catalogue so that
//! every widget names a metric, with a dimension set, that the agent publishes.
//!
//! Widgets: requests, error rate and p50/p99 latency per route; business events; the managed
//! alarms' states; the agent's own drops and publish errors (its self-metrics, published with
//! `Component=agent`). A metric published with dimensions whose values vary (Route, Method,
//! StatusClass) is drawn either one line per configured route, or with a CloudWatch `SEARCH`
//! over exactly the published dimension set, filtered by the values configuration fixes.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tally::conventions::{
    CLIENT_ERROR_COUNT, ERROR_COUNT, ERROR_RATE, IN_FLIGHT, REQUEST_COUNT, RESPONSE_TIME, ROUTE,
};

use crate::catalog::{Catalog, CatalogMetric};

use super::config::DashboardConfig;
use super::desired::Target;

/// Dimension that marks the agent's self-metrics, and its value (see `self_metrics`).
pub const SELF_METRIC_DIMENSION: (&str, &str) = crate::self_metrics::COMPONENT_DIMENSION;

const WIDTH: u32 = 12;
const HEIGHT: u32 = 6;

type DimSet = [(String, Option<String>)];

/// Builds dashboards for one target.
pub struct DashboardBuilder<'a> {
    config: &'a DashboardConfig,
    target: &'a Target<'a>,
    region: &'a str,
    widgets: Vec<Value>,
    notes: Vec<String>,
    next_id: usize,
}

/// The dashboard body and what was left out.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardBody {
    /// The body (the `DashboardBody` JSON document).
    pub body: Value,
    /// Widgets left out, and why.
    pub notes: Vec<String>,
}

fn is_self_metric(m: &CatalogMetric) -> bool {
    m.dimension_sets.iter().any(|s| {
        s.iter().any(|(k, v)| {
            k == SELF_METRIC_DIMENSION.0 && v.as_deref() == Some(SELF_METRIC_DIMENSION.1)
        })
    })
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl<'a> DashboardBuilder<'a> {
    /// A builder for `target`, drawing in `region`.
    pub fn new(config: &'a DashboardConfig, target: &'a Target<'a>, region: &'a str) -> Self {
        Self {
            config,
            target,
            region,
            widgets: Vec::new(),
            notes: Vec::new(),
            next_id: 0,
        }
    }

    fn catalog(&self) -> &'a Catalog {
        self.target.catalog
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("q{}", self.next_id)
    }

    fn explicit_line(&self, name: &str, dims: &[(String, String)], opts: Value) -> Value {
        let mut line = vec![json!(self.target.namespace), json!(name)];
        for (k, v) in dims {
            line.push(json!(k));
            line.push(json!(v));
        }
        line.push(opts);
        Value::Array(line)
    }

    fn search_line(&mut self, name: &str, set: &DimSet, stat: &str, label: &str) -> Value {
        let mut schema = vec![quote(self.target.namespace)];
        schema.extend(set.iter().map(|(k, _)| quote(k)));
        let mut terms = vec![format!("MetricName={}", quote(name))];
        terms.extend(
            set.iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{}={}", quote(k), quote(v)))),
        );
        let search = format!("{{{}}} {}", schema.join(","), terms.join(" "));
        let id = self.id();
        json!([{
            "expression": format!(
                "SEARCH('{}', '{stat}', {})",
                search.replace('\'', "\\'"),
                self.config.period_secs
            ),
            "id": id,
            "label": label,
        }])
    }

    /// Lines for `name` at `stat`: per route when asked and published, else at the service
    /// level. None when the metric is not published.
    fn series(&mut self, name: &str, stat: &str, per_route: bool) -> Option<Vec<Value>> {
        let m = self.catalog().metric(name)?;
        let smallest = |pred: &dyn Fn(&DimSet) -> bool| {
            m.dimension_sets
                .iter()
                .filter(|s| pred(s))
                .min_by_key(|s| s.len())
        };
        if per_route {
            if let Some(set) = smallest(&|s| s.iter().any(|(k, _)| k == ROUTE)) {
                let only_route_varies = set.iter().all(|(k, v)| k == ROUTE || v.is_some());
                if only_route_varies && !self.config.routes.is_empty() {
                    return Some(
                        self.config
                            .routes
                            .iter()
                            .map(|route| {
                                let dims: Vec<(String, String)> = set
                                    .iter()
                                    .map(|(k, v)| {
                                        let v = if k == ROUTE { Some(route) } else { v.as_ref() };
                                        (k.clone(), v.cloned().unwrap_or_default())
                                    })
                                    .collect();
                                self.explicit_line(
                                    name,
                                    &dims,
                                    json!({ "stat": stat, "label": format!("{route} {stat}") }),
                                )
                            })
                            .collect(),
                    );
                }
                return Some(vec![self.search_line(name, set, stat, stat)]);
            }
        }
        if let Some(set) = smallest(&|s| s.iter().all(|(_, v)| v.is_some())) {
            let dims: Vec<(String, String)> = set
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                .collect();
            return Some(vec![self.explicit_line(
                name,
                &dims,
                json!({ "stat": stat, "label": format!("{name} {stat}") }),
            )]);
        }
        let set = smallest(&|_| true)?;
        Some(vec![self.search_line(name, set, stat, stat)])
    }

    fn metric_widget(&mut self, title: &str, stat: &str, lines: Vec<Value>) {
        let n = self.widgets.len() as u32;
        self.widgets.push(json!({
            "type": "metric",
            "x": (n % 2) * WIDTH,
            "y": (n / 2) * HEIGHT,
            "width": WIDTH,
            "height": HEIGHT,
            "properties": {
                "title": title,
                "region": self.region,
                "view": "timeSeries",
                "stacked": false,
                "period": self.config.period_secs,
                "stat": stat,
                "metrics": lines,
            }
        }));
    }

    fn error_rate_lines(&mut self) -> Option<Vec<Value>> {
        if let Some(lines) = self.series(ERROR_RATE, "Average", true) {
            return Some(lines);
        }
        // No derived ErrorRate: compute it from the counters at the service level.
        let fixed = |name: &str| {
            self.catalog().metric(name).and_then(|m| {
                m.dimension_sets
                    .iter()
                    .filter(|s| s.iter().all(|(_, v)| v.is_some()))
                    .min_by_key(|s| s.len())
                    .map(|s| {
                        s.iter()
                            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                            .collect::<Vec<_>>()
                    })
            })
        };
        let (e, r) = (fixed(ERROR_COUNT)?, fixed(REQUEST_COUNT)?);
        Some(vec![
            self.explicit_line(
                ERROR_COUNT,
                &e,
                json!({ "id": "errors", "stat": "Sum", "visible": false }),
            ),
            self.explicit_line(
                REQUEST_COUNT,
                &r,
                json!({ "id": "requests", "stat": "Sum", "visible": false }),
            ),
            json!([{ "expression": "100 * FILL(errors, 0) / requests",
                     "label": "Error rate (%)", "id": "error_rate" }]),
        ])
    }

    /// Builds the body. `alarm_arns` are the managed alarms' ARNs, in display order.
    pub fn build(mut self, alarm_arns: &[String]) -> DashboardBody {
        let period = self.config.period_secs;
        let add = |b: &mut Self, title: String, stat: &str, lines: Option<Vec<Value>>, what| {
            match lines {
                Some(l) => b.metric_widget(&title, stat, l),
                None => b.notes.push(format!(
                    "no {what} widget: the agent publishes no {what} metric under this \
                     configuration"
                )),
            }
        };
        let l = self.series(REQUEST_COUNT, "Sum", true);
        add(
            &mut self,
            format!("Requests per {period} s, by route"),
            "Sum",
            l,
            "request",
        );
        let l = self.error_rate_lines();
        add(
            &mut self,
            "Error rate (%), by route".into(),
            "Average",
            l,
            "error-rate",
        );
        let mut latency = Vec::new();
        for p in ["p50", "p99"] {
            latency.extend(self.series(RESPONSE_TIME, p, true).unwrap_or_default());
        }
        let unit = self
            .catalog()
            .metric(RESPONSE_TIME)
            .map_or(String::new(), |m| format!(" ({})", m.unit));
        let l = (!latency.is_empty()).then_some(latency);
        add(
            &mut self,
            format!("Latency p50 / p99{unit}, by route"),
            "p99",
            l,
            "latency",
        );

        let http = [
            REQUEST_COUNT,
            ERROR_COUNT,
            CLIENT_ERROR_COUNT,
            RESPONSE_TIME,
            IN_FLIGHT,
            ERROR_RATE,
        ];
        let catalog = self.catalog();
        let business: Vec<&CatalogMetric> = catalog
            .metrics
            .iter()
            .filter(|m| !http.contains(&m.name.as_str()) && !is_self_metric(m))
            .collect();
        let mut lines = Vec::new();
        for m in &business {
            let stat = if m.unit == "Count" { "Sum" } else { "Average" };
            lines.extend(self.series(&m.name, stat, false).unwrap_or_default());
        }
        let l = (!lines.is_empty()).then_some(lines);
        add(
            &mut self,
            "Business events".into(),
            "Sum",
            l,
            "business-event",
        );

        if alarm_arns.is_empty() {
            self.notes
                .push("no alarm widget: no managed alarm exists yet".to_owned());
        } else {
            let n = self.widgets.len() as u32;
            self.widgets.push(json!({
                "type": "alarm",
                "x": (n % 2) * WIDTH,
                "y": (n / 2) * HEIGHT,
                "width": WIDTH,
                "height": HEIGHT,
                "properties": { "title": "Alarms", "alarms": alarm_arns },
            }));
        }

        let own: Vec<&CatalogMetric> = catalog
            .metrics
            .iter()
            .filter(|m| is_self_metric(m))
            .filter(|m| {
                let n = m.name.to_ascii_lowercase();
                ["drop", "error", "fail", "reject"]
                    .iter()
                    .any(|w| n.contains(w))
            })
            .collect();
        let mut lines = Vec::new();
        for m in &own {
            lines.extend(self.series(&m.name, "Sum", false).unwrap_or_default());
        }
        if lines.is_empty() {
            self.notes.push(
                "no agent widget: the agent publishes no drop or publish-error metric with \
                 Component=agent; set [self_metrics] cloudwatch = true \
                 (TALLY_SELF_METRICS__CLOUDWATCH=true) to have one"
                    .to_owned(),
            );
        } else {
            self.metric_widget("Agent: dropped samples and publish errors", "Sum", lines);
        }
        DashboardBody {
            body: json!({ "widgets": self.widgets }),
            notes: self.notes,
        }
    }
}

/// Alarm ARNs for `names`, from the ARNs of alarms that exist: an alarm's own ARN when it
/// exists, else one built from the account and region of any existing alarm. Names whose ARN
/// cannot be known yet (no alarm exists at all) are left out.
pub fn alarm_arns(names: &[String], existing: &BTreeMap<String, String>) -> Vec<String> {
    let base = existing.values().find_map(|arn| {
        arn.find(":alarm:")
            .map(|i| arn[..i + ":alarm:".len()].to_owned())
    });
    names
        .iter()
        .filter_map(|n| {
            existing
                .get(n)
                .cloned()
                .or_else(|| base.as_ref().map(|b| format!("{b}{n}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(k: &str, v: &str) -> (String, Option<String>) {
        (k.into(), Some(v.into()))
    }

    fn catalog() -> Catalog {
        let service = vec![fixed("Environment", "prod"), fixed("ServiceName", "web")];
        let route = vec![
            fixed("Environment", "prod"),
            ("Route".into(), None),
            fixed("ServiceName", "web"),
        ];
        let full = vec![
            fixed("Environment", "prod"),
            ("Method".into(), None),
            ("Route".into(), None),
            fixed("ServiceName", "web"),
        ];
        let m = |name: &str, unit: &str, sets: Vec<Vec<(String, Option<String>)>>| CatalogMetric {
            name: name.into(),
            unit: unit.into(),
            dimension_sets: sets,
        };
        // The agent's own metrics exactly as a configuration with them on catalogues them.
        let mut metrics = vec![
            m(
                "RequestCount",
                "Count",
                vec![full.clone(), route.clone(), service.clone()],
            ),
            m("ErrorCount", "Count", vec![full.clone(), service.clone()]),
            m("ResponseTime", "Milliseconds", vec![full.clone()]),
            m("OrdersPlaced", "Count", vec![service.clone()]),
        ];
        metrics.extend(crate::catalog::self_metric_entries("web", "prod", &[]));
        Catalog {
            namespace: "ECS/WebApp".into(),
            metrics,
        }
    }

    fn build(routes: Vec<String>) -> DashboardBody {
        build_from(
            &catalog(),
            routes,
            &["arn:aws:cloudwatch:us-east-1:1:alarm:tally-a".into()],
        )
    }

    fn build_from(c: &Catalog, routes: Vec<String>, alarm_arns: &[String]) -> DashboardBody {
        let t = Target {
            namespace: "ECS/WebApp",
            service: "web",
            environment: "prod",
            period_secs: 60,
            catalog: c,
        };
        let cfg = DashboardConfig {
            routes,
            ..DashboardConfig::default()
        };
        DashboardBuilder::new(&cfg, &t, "us-east-1").build(alarm_arns)
    }

    fn text(b: &DashboardBody) -> String {
        serde_json::to_string(&b.body).unwrap()
    }

    #[test]
    fn without_self_metrics_the_plan_says_how_to_get_the_agent_widget() {
        let mut c = catalog();
        c.metrics.retain(|m| !is_self_metric(m));
        let b = build_from(&c, Vec::new(), &[]);
        assert!(!text(&b).contains("Agent: dropped samples"));
        assert!(
            b.notes
                .iter()
                .any(|n| n.contains("[self_metrics] cloudwatch = true")),
            "{:?}",
            b.notes
        );
    }

    #[test]
    fn configured_routes_are_drawn_one_line_each_from_the_route_rollup() {
        let b = build(vec!["/orders".into(), "/health".into()]);
        let w = &b.body["widgets"][0]["properties"]["metrics"];
        assert_eq!(
            w[0],
            json!(["ECS/WebApp", "RequestCount", "Environment", "prod", "Route", "/orders",
                   "ServiceName", "web", {"stat": "Sum", "label": "/orders Sum"}])
        );
        assert_eq!(w.as_array().unwrap().len(), 2);
    }

    #[test]
    fn without_a_route_rollup_latency_is_drawn_with_a_search_over_the_published_set() {
        let b = build(vec!["/orders".into()]);
        let t = text(&b);
        assert!(
            t.contains(r#"SEARCH('{\"ECS/WebApp\",\"Environment\",\"Method\",\"Route\",\"ServiceName\"} MetricName=\"ResponseTime\" \"Environment\"=\"prod\" \"ServiceName\"=\"web\"', 'p99', 60)"#),
            "{t}"
        );
    }

    #[test]
    fn without_a_derived_error_rate_the_widget_uses_metric_math_over_the_counters() {
        let t = text(&build(vec![]));
        assert!(t.contains("100 * FILL(errors, 0) / requests"), "{t}");
    }

    #[test]
    fn business_events_alarms_and_agent_drops_get_their_widgets() {
        let b = build(vec![]);
        let t = text(&b);
        assert!(t.contains("OrdersPlaced"), "{t}");
        assert!(t.contains("\"type\":\"alarm\""), "{t}");
        let agent = b.body["widgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["properties"]["title"] == "Agent: dropped samples and publish errors")
            .expect("the agent widget");
        let lines = serde_json::to_string(&agent["properties"]["metrics"]).unwrap();
        for name in [
            "AgentDroppedSamples",
            "AgentPublishErrors",
            "AgentDecodeErrors",
        ] {
            assert!(
                lines.contains(&format!(
                    r#"["ECS/WebApp","{name}","Component","agent","Environment","prod","ServiceName","web",{{"label":"{name} Sum","stat":"Sum"}}]"#
                )),
                "{name} drawn with its published dimension set: {lines}"
            );
        }
        for name in [
            "AgentActiveSeries",
            "AgentBatchesAccepted",
            "AgentPendingBytes",
        ] {
            assert!(!t.contains(name), "{name} is not a drop or an error: {t}");
        }
        assert!(b.notes.is_empty(), "{:?}", b.notes);
    }

    #[test]
    fn arns_of_missing_alarms_are_built_from_any_existing_one() {
        let existing: BTreeMap<String, String> = [(
            "tally-a".to_owned(),
            "arn:aws:cloudwatch:us-east-1:000000000000:alarm:tally-a".to_owned(),
        )]
        .into();
        assert_eq!(
            alarm_arns(&["tally-a".into(), "tally-b".into()], &existing),
            vec![
                "arn:aws:cloudwatch:us-east-1:000000000000:alarm:tally-a".to_owned(),
                "arn:aws:cloudwatch:us-east-1:000000000000:alarm:tally-b".to_owned(),
            ]
        );
        assert!(alarm_arns(&["tally-b".into()], &BTreeMap::new()).is_empty());
    }
}
