//! The catalogue: every metric identity (namespace, name, dimension names) the agent will
//! publish under its configuration.
//!
//! The publisher's configuration (namespace, global dimensions, declared metrics, rollups,
//! derived metrics) is the only input, so alarms and dashboards provisioned from the catalogue
//! watch exactly what is published. `tally-agent validate` checks every alarm against it.

use crate::aggregate::{AggregateConfig, TimeUnit};
use crate::self_metrics::{dimensions, SelfMetricsConfig, SELF_METRICS};

/// One metric as it will appear in CloudWatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogMetric {
    /// Metric name.
    pub name: String,
    /// CloudWatch unit name as published (`Milliseconds`, `Count`, `Percent`, ...).
    pub unit: String,
    /// Every dimension set the metric is published with. Each set lists (name, value) pairs
    /// sorted by name; the value is `Some` when fixed by configuration (ServiceName,
    /// Environment, ECS task dimensions) and `None` when it varies (Route, Method, ...).
    pub dimension_sets: Vec<Vec<(String, Option<String>)>>,
}

/// Everything the agent publishes under one configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    /// CloudWatch namespace.
    pub namespace: String,
    /// The metrics.
    pub metrics: Vec<CatalogMetric>,
}

impl Catalog {
    /// The metric with this name, if published.
    pub fn metric(&self, name: &str) -> Option<&CatalogMetric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// Whether `name` is published with exactly this set of dimension names (values are
    /// checked where the catalogue fixes them).
    pub fn publishes(&self, name: &str, dimensions: &[(String, String)]) -> bool {
        let Some(m) = self.metric(name) else {
            return false;
        };
        m.dimension_sets.iter().any(|set| {
            set.len() == dimensions.len()
                && set.iter().all(|(k, fixed)| {
                    dimensions
                        .iter()
                        .any(|(dk, dv)| dk == k && fixed.as_ref().is_none_or(|f| f == dv))
                })
        })
    }
}

/// What the catalogue is built from: the configuration's namespace, identity, publish unit,
/// `[aggregate]` and `[self_metrics]` sections, and the `[ecs]` dimensions the agent resolved
/// (`Catalog::from_config` fills it from a whole configuration).
#[derive(Debug, Clone, Copy)]
pub struct CatalogInputs<'a> {
    /// CloudWatch namespace.
    pub namespace: &'a str,
    /// The configured `ServiceName` (empty: it varies with the SDK process).
    pub service: &'a str,
    /// The configured `Environment` (empty: it varies with the SDK process).
    pub environment: &'a str,
    /// The unit durations are published in.
    pub time_unit: TimeUnit,
    /// Standard, declared, rolled-up and derived metrics.
    pub aggregate: &'a AggregateConfig,
    /// Whether the agent's own metrics are published.
    pub self_metrics: &'a SelfMetricsConfig,
    /// Fixed dimensions the agent adds to every metric besides ServiceName and Environment.
    pub extra: &'a [(String, String)],
}

impl Catalog {
    /// Everything the agent publishes given `inputs`: tally-tower's standard metrics (unless
    /// `aggregate.standard_metrics = false`), the declared `[[aggregate.metrics]]`, each with
    /// its rollups, the derived metrics on every dimension set of their denominator, and the
    /// agent's own metrics with `Component=agent` when `[self_metrics] cloudwatch = true`.
    pub fn build(inputs: &CatalogInputs<'_>) -> Catalog {
        use crate::cloudwatch::{cloudwatch_unit, parse_unit};
        use tally::conventions as c;
        use tally::wire::Unit;

        let extra = inputs.extra;
        let fixed = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        let mut globals = vec![
            (c::SERVICE_NAME.to_owned(), fixed(inputs.service)),
            (c::ENVIRONMENT.to_owned(), fixed(inputs.environment)),
        ];
        globals.extend(extra.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
        let http_labels = [c::ROUTE, c::METHOD, c::STATUS_CLASS].map(str::to_owned);
        let mut recorded: Vec<(String, Unit, Vec<String>)> = Vec::new();
        if inputs.aggregate.standard_metrics {
            for name in [c::REQUEST_COUNT, c::ERROR_COUNT, c::CLIENT_ERROR_COUNT] {
                recorded.push((name.into(), Unit::Count, http_labels.to_vec()));
            }
            recorded.push((
                c::RESPONSE_TIME.into(),
                Unit::Nanoseconds,
                http_labels.to_vec(),
            ));
            recorded.push((c::IN_FLIGHT.into(), Unit::Count, Vec::new()));
        }
        for m in &inputs.aggregate.metrics {
            let unit = parse_unit(&m.unit).unwrap_or(Unit::None);
            recorded.push((m.name.clone(), unit, m.labels.clone()));
        }

        let mut metrics: Vec<CatalogMetric> = Vec::new();
        for (name, unit, labels) in recorded {
            let mut base: Vec<(String, Option<String>)> = globals.clone();
            base.extend(labels.iter().map(|l| (l.clone(), None)));
            base.sort();
            let mut sets = vec![base.clone()];
            for r in &inputs.aggregate.rollups {
                // The closer's own rule (`RollupConfig::applies_to`).
                if !r.applies_to(&name, base.iter().map(|(k, _)| k.as_str())) {
                    continue;
                }
                let set: Vec<_> = base.iter().filter(|(k, _)| !r.drops(k)).cloned().collect();
                if !sets.contains(&set) {
                    sets.push(set);
                }
            }
            let unit = cloudwatch_unit(inputs.time_unit.published(unit)).to_owned();
            match metrics.iter_mut().find(|m| m.name == name) {
                Some(m) => {
                    for s in sets {
                        if !m.dimension_sets.contains(&s) {
                            m.dimension_sets.push(s);
                        }
                    }
                }
                None => metrics.push(CatalogMetric {
                    name,
                    unit,
                    dimension_sets: sets,
                }),
            }
        }
        let mut derived = Vec::new();
        for d in &inputs.aggregate.derived {
            let Some(den) = metrics.iter().find(|m| m.name == d.denominator) else {
                continue;
            };
            let sets: Vec<_> = den
                .dimension_sets
                .iter()
                .filter(|s| !d.excludes(s.iter().map(|(k, _)| k.as_str())))
                .cloned()
                .collect();
            if sets.is_empty() {
                continue;
            }
            derived.push(CatalogMetric {
                name: d.name.clone(),
                unit: cloudwatch_unit(d.published_unit()).to_owned(),
                dimension_sets: sets,
            });
        }
        metrics.extend(derived);
        if inputs.self_metrics.cloudwatch {
            metrics.extend(self_metric_entries(
                inputs.service,
                inputs.environment,
                extra,
            ));
        }
        Catalog {
            namespace: inputs.namespace.to_owned(),
            metrics,
        }
    }
}

/// The catalogue entries of the agent's own metrics (`[self_metrics] cloudwatch = true`):
/// one fully fixed dimension set each, as the agent's `SelfMetrics` publishes them.
pub fn self_metric_entries(
    service: &str,
    environment: &str,
    extra: &[(String, String)],
) -> Vec<CatalogMetric> {
    let set: Vec<(String, Option<String>)> = dimensions(service, environment, extra)
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .collect();
    SELF_METRICS
        .iter()
        .map(|m| CatalogMetric {
            name: m.name.to_owned(),
            unit: crate::cloudwatch::cloudwatch_unit(m.unit).to_owned(),
            dimension_sets: vec![set.clone()],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RollupConfig};

    fn dims(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn error_rate_is_catalogued_only_on_dimension_sets_without_status_class() {
        let mut c = Config {
            namespace: "ECS/WebApp".into(),
            service: "web-app".into(),
            environment: "prod".into(),
            ..Config::default()
        };
        let cat = Catalog::from_config(&c);
        assert!(
            cat.metric("ErrorRate").is_none(),
            "no rollup drops StatusClass"
        );
        c.aggregate.rollups = vec![
            RollupConfig {
                drop: vec!["StatusClass".into()],
                metrics: vec![],
            },
            RollupConfig {
                drop: vec!["Route".into(), "Method".into(), "StatusClass".into()],
                metrics: vec![],
            },
        ];
        let cat = Catalog::from_config(&c);
        assert_eq!(cat.namespace, "ECS/WebApp");
        let er = cat.metric("ErrorRate").unwrap();
        assert_eq!(er.unit, "Percent");
        assert_eq!(er.dimension_sets.len(), 2);
        assert!(cat.publishes(
            "ErrorRate",
            &dims(&[("ServiceName", "web-app"), ("Environment", "prod")])
        ));
        assert!(!cat.publishes(
            "ErrorRate",
            &dims(&[("ServiceName", "other"), ("Environment", "prod")])
        ));
        assert!(cat.publishes(
            "ResponseTime",
            &dims(&[
                ("ServiceName", "web-app"),
                ("Environment", "prod"),
                ("Route", "/x"),
                ("Method", "GET"),
                ("StatusClass", "2xx")
            ])
        ));
        assert_eq!(cat.metric("ResponseTime").unwrap().unit, "Milliseconds");
        assert_eq!(
            cat.metric("InFlightRequests").unwrap().dimension_sets.len(),
            1
        );
    }

    #[test]
    fn a_rollup_that_drops_only_an_ecs_dimension_is_catalogued_as_the_aggregator_publishes_it() {
        let mut c = Config {
            service: "web".into(),
            environment: "prod".into(),
            ..Config::default()
        };
        c.aggregate.rollups = vec![RollupConfig {
            drop: vec!["AvailabilityZone".into()],
            metrics: vec![],
        }];
        let extra = dims(&[("AvailabilityZone", "eu-west-1a"), ("ClusterName", "c1")]);
        let cat = Catalog::from_config_with(&c, &extra);
        // InFlightRequests has no label at all: the rollup applies through the ECS dimension.
        let sets = &cat.metric("InFlightRequests").unwrap().dimension_sets;
        assert_eq!(sets.len(), 2, "{sets:?}");
        assert!(cat.publishes(
            "InFlightRequests",
            &dims(&[
                ("ClusterName", "c1"),
                ("Environment", "prod"),
                ("ServiceName", "web")
            ])
        ));
        assert!(cat.publishes(
            "InFlightRequests",
            &dims(&[
                ("AvailabilityZone", "eu-west-1a"),
                ("ClusterName", "c1"),
                ("Environment", "prod"),
                ("ServiceName", "web")
            ])
        ));
    }

    #[test]
    fn declared_metrics_appear_with_their_labels_and_unit() {
        let c: Config = toml::from_str(
            "[[aggregate.metrics]]\nname = \"OrdersPlaced\"\nlabels = [\"Region\"]\n[[aggregate.metrics]]\nname = \"CheckoutTime\"\nunit = \"Nanoseconds\"\n",
        )
        .unwrap();
        let cat = Catalog::from_config(&c);
        let o = cat.metric("OrdersPlaced").unwrap();
        assert_eq!(o.unit, "Count");
        assert_eq!(
            o.dimension_sets,
            vec![vec![
                ("Environment".to_owned(), None),
                ("Region".to_owned(), None),
                ("ServiceName".to_owned(), None)
            ]]
        );
        assert_eq!(cat.metric("CheckoutTime").unwrap().unit, "Milliseconds");
    }

    #[test]
    fn self_metrics_are_catalogued_with_component_agent_only_when_published() {
        let mut c = Config {
            service: "web-app".into(),
            environment: "prod".into(),
            ..Config::default()
        };
        let extra = dims(&[("ClusterName", "blue")]);
        let off = Catalog::from_config_with(&c, &extra);
        assert!(off.metric("AgentDroppedSamples").is_none());
        c.self_metrics.cloudwatch = true;
        let on = Catalog::from_config_with(&c, &extra);
        assert_eq!(on.metrics.len(), off.metrics.len() + 6);
        let published = dims(&[
            ("ServiceName", "web-app"),
            ("Environment", "prod"),
            ("ClusterName", "blue"),
            ("Component", "agent"),
        ]);
        for name in [
            "AgentActiveSeries",
            "AgentBatchesAccepted",
            "AgentDecodeErrors",
            "AgentDroppedSamples",
            "AgentPendingBytes",
            "AgentPublishErrors",
        ] {
            assert!(on.publishes(name, &published), "{name}");
        }
        assert!(!on.publishes("AgentDroppedSamples", &published[..3]));
        assert_eq!(on.metric("AgentPendingBytes").unwrap().unit, "Bytes");
    }
}
