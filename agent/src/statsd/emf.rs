//! Embedded Metric Format in: JSON records with `_aws.CloudWatchMetrics`, as the
//! `aws-embedded-metrics` clients send them to the CloudWatch agent (`AWS_EMF_AGENT_ENDPOINT`,
//! TCP or UDP `127.0.0.1:25888`, one record a line or a datagram).
//!
//! A record's metrics merge like StatsD's, through the same [`super::Receiver`]:
//!
//! - unit `Seconds`, `Milliseconds` or `Microseconds`: a timer (nanosecond HDR histogram,
//!   published in the agent's `time_unit`); `Count`: a counter (the values are added);
//!   anything else: a distribution (six decimals, unit `None`). A value may be a number or an
//!   array of numbers (each one a sample).
//! - Clamped to the agent's configuration, since an EMF client choosing its namespaces and
//!   dimension sets is how bills explode: every metric is published in the agent's
//!   `namespace` (a record naming another is counted in
//!   `tally_agent_emf_clamped_total{what="namespace"}`); only the first
//!   `statsd.emf_max_dimension_sets` dimension sets of a directive are used (the others are
//!   counted, `what="dimension_set"`), and dimension values go through the same per-key
//!   limits as StatsD tags (`__other__` past a limit). Dimensions named `ServiceName` and
//!   `Environment` give the identity, like DogStatsD's `service:` and `env:` tags.
//! - Properties that are neither metrics nor dimensions are not logs here: they are dropped
//!   (the agent keeps no log stream).

use serde_json::Value;

use super::parse::Kind;

/// One metric of a record, ready to merge: name, kind, values (in milliseconds for timers),
/// and its dimensions as `key:value` pairs joined by commas.
#[derive(Debug, Clone, PartialEq)]
pub struct EmfMetric {
    /// Metric name.
    pub name: String,
    /// How it is aggregated.
    pub kind: Kind,
    /// The samples.
    pub values: Vec<f64>,
    /// Dimensions in the StatsD tag form (`k:v,k:v`; commas and `|` in values become `_`).
    pub tags: String,
}

/// Why a record was refused; [`EmfError::reason`] is its counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmfError {
    /// Not a JSON object.
    NotJson,
    /// No `_aws.CloudWatchMetrics` array.
    NotEmf,
    /// A dimension names a property that is missing or not a string.
    MissingDimension,
    /// A metric value is missing, not a finite number, or negative.
    BadValue,
    /// Longer than `statsd.emf_max_record_bytes`.
    Oversized,
}

impl EmfError {
    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            EmfError::NotJson => "emf_not_json",
            EmfError::NotEmf => "emf_no_directive",
            EmfError::MissingDimension => "emf_missing_dimension",
            EmfError::BadValue => "emf_bad_value",
            EmfError::Oversized => "emf_oversized_record",
        }
    }
}

/// What a record gave, and what was clamped.
#[derive(Debug, Default)]
pub struct Record {
    /// The metrics.
    pub metrics: Vec<EmfMetric>,
    /// Directives that named a namespace other than the agent's.
    pub foreign_namespaces: u64,
    /// Dimension sets left out (past the allowed number).
    pub dropped_dimension_sets: u64,
}

fn clean(v: &str) -> String {
    v.replace([',', '|', '\n'], "_")
}

fn kind_of(unit: Option<&str>) -> (Kind, f64) {
    match unit {
        Some("Milliseconds") => (Kind::Timer, 1.0),
        Some("Seconds") => (Kind::Timer, 1e3),
        Some("Microseconds") => (Kind::Timer, 1e-3),
        Some("Count") => (Kind::Counter, 1.0),
        _ => (Kind::Distribution, 1.0),
    }
}

/// Parses one record. `namespace` is the agent's; `max_sets` the dimension sets kept per
/// directive (at least one: a directive with none publishes without dimensions).
pub fn parse_record(line: &str, namespace: &str, max_sets: usize) -> Result<Record, EmfError> {
    let root: Value = serde_json::from_str(line).map_err(|_| EmfError::NotJson)?;
    let obj = root.as_object().ok_or(EmfError::NotJson)?;
    let directives = obj
        .get("_aws")
        .and_then(|a| a.get("CloudWatchMetrics"))
        .and_then(Value::as_array)
        .ok_or(EmfError::NotEmf)?;
    let mut out = Record::default();
    for d in directives {
        if d.get("Namespace").and_then(Value::as_str) != Some(namespace) {
            out.foreign_namespaces += 1;
        }
        let sets: Vec<&Vec<Value>> = d
            .get("Dimensions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_array).collect())
            .unwrap_or_default();
        let keep = sets.len().min(max_sets.max(1));
        out.dropped_dimension_sets += (sets.len() - keep) as u64;
        let mut tag_sets: Vec<String> = Vec::new();
        for set in &sets[..keep] {
            let mut tags = Vec::new();
            for k in set.iter() {
                let k = k.as_str().ok_or(EmfError::MissingDimension)?;
                let v = obj
                    .get(k)
                    .and_then(Value::as_str)
                    .ok_or(EmfError::MissingDimension)?;
                // ServiceName and Environment are the identity, as DogStatsD's service/env.
                let k = match k {
                    "ServiceName" => "service".to_owned(),
                    "Environment" => "env".to_owned(),
                    k => clean(k).replace(':', "_"),
                };
                tags.push(format!("{k}:{}", clean(v)));
            }
            tag_sets.push(tags.join(","));
        }
        if tag_sets.is_empty() {
            tag_sets.push(String::new());
        }
        for m in d
            .get("Metrics")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Some(name) = m.get("Name").and_then(Value::as_str) else {
                return Err(EmfError::BadValue);
            };
            let (kind, factor) = kind_of(m.get("Unit").and_then(Value::as_str));
            let raw = obj.get(name).ok_or(EmfError::BadValue)?;
            let mut values = Vec::new();
            let mut push = |v: &Value| -> Result<(), EmfError> {
                let x = v.as_f64().filter(|x| x.is_finite() && *x >= 0.0);
                values.push(x.ok_or(EmfError::BadValue)? * factor);
                Ok(())
            };
            match raw {
                Value::Array(a) => a.iter().try_for_each(&mut push)?,
                v => push(v)?,
            }
            for tags in &tag_sets {
                out.metrics.push(EmfMetric {
                    name: name.to_owned(),
                    kind,
                    values: values.clone(),
                    tags: tags.clone(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"_aws":{"Timestamp":1700000000000,"LogGroupName":"g","CloudWatchMetrics":[{"Namespace":"Shop","Dimensions":[["Route"],["Route","Method"]],"Metrics":[{"Name":"Latency","Unit":"Milliseconds"},{"Name":"Orders","Unit":"Count"},{"Name":"Size","Unit":"Bytes"}]}]},"Route":"/a","Method":"GET","Latency":[12.5,3],"Orders":2,"Size":100,"requestId":"r1"}"#;

    #[test]
    fn a_record_gives_its_metrics_with_the_first_dimension_set_and_counts_what_was_clamped() {
        let r = parse_record(RECORD, "Tally", 1).unwrap();
        assert_eq!(r.foreign_namespaces, 1);
        assert_eq!(r.dropped_dimension_sets, 1);
        assert_eq!(
            r.metrics,
            vec![
                EmfMetric {
                    name: "Latency".into(),
                    kind: Kind::Timer,
                    values: vec![12.5, 3.0],
                    tags: "Route:/a".into()
                },
                EmfMetric {
                    name: "Orders".into(),
                    kind: Kind::Counter,
                    values: vec![2.0],
                    tags: "Route:/a".into()
                },
                EmfMetric {
                    name: "Size".into(),
                    kind: Kind::Distribution,
                    values: vec![100.0],
                    tags: "Route:/a".into()
                },
            ]
        );
        let both = parse_record(RECORD, "Shop", 2).unwrap();
        assert_eq!(
            (both.foreign_namespaces, both.dropped_dimension_sets),
            (0, 0)
        );
        assert_eq!(both.metrics.len(), 6);
        assert_eq!(both.metrics[1].tags, "Route:/a,Method:GET");
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        assert_eq!(parse_record("{", "T", 1).unwrap_err(), EmfError::NotJson);
        assert_eq!(
            parse_record("{\"a\":1}", "T", 1).unwrap_err(),
            EmfError::NotEmf
        );
        let missing = r#"{"_aws":{"CloudWatchMetrics":[{"Namespace":"T","Dimensions":[["X"]],"Metrics":[{"Name":"M"}]}]},"M":1}"#;
        assert_eq!(
            parse_record(missing, "T", 1).unwrap_err(),
            EmfError::MissingDimension
        );
        let bad = r#"{"_aws":{"CloudWatchMetrics":[{"Namespace":"T","Metrics":[{"Name":"M"}]}]},"M":"x"}"#;
        assert_eq!(parse_record(bad, "T", 1).unwrap_err(), EmfError::BadValue);
        let seconds = r#"{"_aws":{"CloudWatchMetrics":[{"Namespace":"T","Metrics":[{"Name":"M","Unit":"Seconds"}]}]},"M":0.5}"#;
        let r = parse_record(seconds, "T", 1).unwrap();
        assert_eq!(
            (
                r.metrics[0].kind,
                r.metrics[0].values[0],
                r.metrics[0].tags.as_str()
            ),
            (Kind::Timer, 500.0, "")
        );
    }
}
