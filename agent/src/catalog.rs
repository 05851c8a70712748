//! The catalogue: every metric identity (namespace, name, dimension names) the agent will
//! publish under its configuration.
//!
//! The publisher's configuration (namespace, global dimensions, declared metrics, rollups,
//! derived metrics) is the only input, so alarms and dashboards provisioned from the catalogue
//! watch exactly what is published. `tally-agent validate` checks every alarm against it.

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
