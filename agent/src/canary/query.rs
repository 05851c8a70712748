//! Reading both sides of the comparison with one `GetMetricData` call: plain `MetricStat`
//! queries only (no metric math, so the same queries work against every CloudWatch
//! implementation that answers GetMetricData).
//!
//! One period covers the whole window, so each query answers one value: the Sums of
//! `RequestCount` and `ErrorCount`, and the latency statistic of `ResponseTime` computed by
//! CloudWatch over every sample of the window. Should CloudWatch still split the window in
//! two points (its period boundaries need not match the window's), the counts are added and
//! the larger latency value is kept: the p99 of a union of samples is at most the largest
//! p99 of its parts, so the gate can only err towards "unhealthy".

use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::error::DisplayErrorContext;
use aws_sdk_cloudwatch::types::{
    Dimension, Metric, MetricDataQuery, MetricDataResult, MetricStat, StatusCode,
};
use aws_sdk_cloudwatch::Client;
use serde::Serialize;
use tally::conventions::{ERROR_COUNT, REQUEST_COUNT, RESPONSE_TIME};

use super::GateError;

/// Most GetMetricData pages read (each query answers one or two points: one page in practice).
const MAX_PAGES: usize = 20;

/// What one side (canary or baseline) did in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Side {
    /// The dimension value (`42`).
    pub value: String,
    /// Requests (Sum of `RequestCount`).
    pub requests: f64,
    /// Server errors (Sum of `ErrorCount`; none published means none counted).
    pub errors: f64,
    /// The latency statistic in the published unit; `None` without data (or not asked).
    pub latency: Option<f64>,
}

impl Side {
    /// Error rate in percent (`None` without requests).
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| 100.0 * self.errors / self.requests)
    }
}

/// Which series both sides are read from.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Namespace.
    pub namespace: String,
    /// Dimensions both sides share (`ServiceName`, `Environment`, kept ones).
    pub common: Vec<(String, String)>,
    /// The dimension whose value tells the sides apart.
    pub dimension: String,
    /// The latency statistic, when latency is compared.
    pub latency_statistic: Option<String>,
}

/// Id prefixes of the two sides' queries.
pub const CANARY: &str = "canary";
/// See [`CANARY`].
pub const BASELINE: &str = "baseline";

fn query(
    sel: &Selector,
    side: &str,
    value: &str,
    what: &str,
    metric: &str,
    stat: &str,
    period: i32,
) -> MetricDataQuery {
    let mut dims: Vec<Dimension> = sel
        .common
        .iter()
        .map(|(k, v)| Dimension::builder().name(k).value(v).build())
        .collect();
    dims.push(
        Dimension::builder()
            .name(&sel.dimension)
            .value(value)
            .build(),
    );
    MetricDataQuery::builder()
        .id(format!("{side}_{what}"))
        .metric_stat(
            MetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace(&sel.namespace)
                        .metric_name(metric)
                        .set_dimensions(Some(dims))
                        .build(),
                )
                .period(period)
                .stat(stat)
                .build(),
        )
        .return_data(true)
        .build()
}

/// The queries for both sides: requests, errors and (when asked) latency.
pub fn queries(sel: &Selector, canary: &str, baseline: &str, period: i32) -> Vec<MetricDataQuery> {
    let mut out = Vec::new();
    for (side, value) in [(CANARY, canary), (BASELINE, baseline)] {
        out.push(query(
            sel,
            side,
            value,
            "requests",
            REQUEST_COUNT,
            "Sum",
            period,
        ));
        out.push(query(
            sel,
            side,
            value,
            "errors",
            ERROR_COUNT,
            "Sum",
            period,
        ));
        if let Some(stat) = &sel.latency_statistic {
            out.push(query(
                sel,
                side,
                value,
                "latency",
                RESPONSE_TIME,
                stat,
                period,
            ));
        }
    }
    out
}

/// Runs the queries over `[end - window, end)`, every page, and returns every result.
pub async fn fetch(
    client: &Client,
    queries: Vec<MetricDataQuery>,
    end: SystemTime,
    window: Duration,
) -> Result<Vec<MetricDataResult>, GateError> {
    let start = end - window;
    let mut token: Option<String> = None;
    let mut results = Vec::new();
    for _ in 0..MAX_PAGES {
        let out = client
            .get_metric_data()
            .set_metric_data_queries(Some(queries.clone()))
            .start_time(start.into())
            .end_time(end.into())
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| GateError::Read(DisplayErrorContext(&e).to_string()))?;
        results.extend(out.metric_data_results().iter().cloned());
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Ok(results),
        }
    }
    Err(GateError::Read(format!(
        "GetMetricData still had more pages after {MAX_PAGES}: shorten canary.window_secs"
    )))
}

/// Both sides from GetMetricData results (all pages; ids as [`queries`] makes them).
pub fn sides(
    results: &[MetricDataResult],
    canary: &str,
    baseline: &str,
) -> Result<(Side, Side), GateError> {
    for r in results {
        if let Some(code) = r.status_code() {
            if matches!(code, StatusCode::InternalError | StatusCode::Forbidden) {
                return Err(GateError::Read(format!(
                    "GetMetricData answered {} for query {}: {}",
                    code.as_str(),
                    r.id().unwrap_or_default(),
                    r.messages()
                        .iter()
                        .filter_map(|m| m.value())
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
        }
    }
    let values = |id: String| -> Vec<f64> {
        results
            .iter()
            .filter(|r| r.id() == Some(id.as_str()))
            .flat_map(|r| r.values().iter().copied())
            .filter(|v| v.is_finite())
            .collect()
    };
    let side = |prefix: &str, value: &str| Side {
        value: value.to_owned(),
        // fold from +0.0: an empty f64 `sum()` is -0.0, which would print as "-0.00%".
        requests: values(format!("{prefix}_requests"))
            .iter()
            .fold(0.0, |a, v| a + v),
        errors: values(format!("{prefix}_errors"))
            .iter()
            .fold(0.0, |a, v| a + v),
        latency: values(format!("{prefix}_latency"))
            .into_iter()
            .reduce(f64::max),
    };
    Ok((side(CANARY, canary), side(BASELINE, baseline)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_asks_for_requests_errors_and_latency_with_its_own_value() {
        let sel = Selector {
            namespace: "Tally".into(),
            common: vec![
                ("Environment".into(), "prod".into()),
                ("ServiceName".into(), "shop".into()),
            ],
            dimension: "TaskDefinitionRevision".into(),
            latency_statistic: Some("p99".into()),
        };
        let q = queries(&sel, "42", "41", 600);
        let ids: Vec<&str> = q.iter().filter_map(|q| q.id()).collect();
        assert_eq!(
            ids,
            [
                "canary_requests",
                "canary_errors",
                "canary_latency",
                "baseline_requests",
                "baseline_errors",
                "baseline_latency"
            ]
        );
        let latency = q[2].metric_stat().unwrap();
        assert_eq!(latency.stat(), Some("p99"));
        assert_eq!(latency.period(), Some(600));
        let m = latency.metric().unwrap();
        assert_eq!(m.metric_name(), Some("ResponseTime"));
        let dims: Vec<(&str, &str)> = m
            .dimensions()
            .iter()
            .map(|d| (d.name().unwrap(), d.value().unwrap()))
            .collect();
        assert_eq!(
            dims,
            [
                ("Environment", "prod"),
                ("ServiceName", "shop"),
                ("TaskDefinitionRevision", "42")
            ]
        );
        let base = q[3].metric_stat().unwrap().metric().unwrap();
        assert_eq!(base.dimensions()[2].value(), Some("41"));
        let sel = Selector {
            latency_statistic: None,
            ..sel
        };
        assert_eq!(queries(&sel, "42", "41", 600).len(), 4);
    }

    #[test]
    fn split_windows_add_counts_and_keep_the_larger_latency() {
        let r = |id: &str, v: &[f64]| {
            MetricDataResult::builder()
                .id(id)
                .set_values(Some(v.to_vec()))
                .status_code(StatusCode::Complete)
                .build()
        };
        let results = [
            r("canary_requests", &[300.0, 200.0]),
            r("canary_errors", &[]),
            r("canary_latency", &[120.0, 180.0]),
            r("baseline_requests", &[10.0]),
        ];
        let (c, b) = sides(&results, "42", "41").unwrap();
        assert_eq!((c.requests, c.errors, c.latency), (500.0, 0.0, Some(180.0)));
        assert_eq!((b.requests, b.latency), (10.0, None));
        assert!(c.errors.is_sign_positive(), "no data is +0, not -0");
        assert_eq!(c.error_rate(), Some(0.0));
        let failed = [MetricDataResult::builder()
            .id("canary_latency")
            .status_code(StatusCode::InternalError)
            .build()];
        assert!(sides(&failed, "42", "41").is_err());
    }
}
