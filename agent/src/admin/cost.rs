//! What the published metrics cost per month, estimated from the last closed period.
//!
//! Prices (us-east-1, taken from secondary sources, not checked against AWS's price list; the
//! current ones are at <https://aws.amazon.com/cloudwatch/pricing/>; estimates only):
//! custom metrics $0.30 a month for the first 10,000, $0.10 up to 250,000, $0.05 up to
//! 1,000,000, $0.02 beyond; PutMetricData $0.01 per 1,000 requests.

use serde::Serialize;

/// (metrics in tier, dollars per metric-month), in order; the last tier is unbounded.
pub const METRIC_TIERS: &[(u64, f64)] = &[
    (10_000, 0.30),
    (240_000, 0.10),
    (750_000, 0.05),
    (u64::MAX, 0.02),
];
/// Dollars per PutMetricData request.
pub const PRICE_PER_REQUEST: f64 = 0.01 / 1000.0;
/// Most datums one PutMetricData request takes (API model).
pub const MAX_DATUMS_PER_REQUEST: u64 = crate::cloudwatch::MAX_DATUMS_PER_REQUEST as u64;
/// Seconds in an average month (30.44 days).
pub const MONTH_SECS: f64 = 30.44 * 86_400.0;

/// The estimate served on `/cost`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostEstimate {
    /// Distinct metrics (namespace + name + dimensions) in the last closed period, the
    /// agent's own included.
    pub custom_metrics: u64,
    /// Of those, the agent's own metrics (`[self_metrics] cloudwatch = true`; else 0).
    pub self_metrics: u64,
    /// Of those, the per-revision series (`[canary] publish_revision`; else 0).
    pub revision_metrics: u64,
    /// What the per-revision series add to the monthly metric price.
    pub revision_usd_per_month: f64,
    /// Datums per period (distributions need one per 150 distinct values).
    pub datums_per_period: u64,
    /// PutMetricData requests per period (`publish.max_datums_per_request` datums each).
    pub requests_per_period: u64,
    /// Period length.
    pub period_secs: u32,
    /// Monthly dollars for the metrics.
    pub metrics_usd_per_month: f64,
    /// Monthly dollars for the requests.
    pub requests_usd_per_month: f64,
    /// Both.
    pub total_usd_per_month: f64,
    /// How the figures were made.
    pub note: &'static str,
}

/// Monthly cost of `metrics` custom metrics under the tiered price.
pub fn metrics_cost(metrics: u64) -> f64 {
    let mut left = metrics;
    let mut usd = 0.0;
    for (size, price) in METRIC_TIERS {
        let n = left.min(*size);
        usd += n as f64 * price;
        left -= n;
        if left == 0 {
            break;
        }
    }
    usd
}

/// The estimate for a period's user metric and datum counts plus `self_metrics` metrics of
/// the agent's own (one datum each, in the same requests), sent `max_datums_per_request`
/// datums a call (the configured `publish.max_datums_per_request`; CloudWatch's limit,
/// [`MAX_DATUMS_PER_REQUEST`], when larger or 0).
pub fn estimate(
    user_metrics: u64,
    user_datums: u64,
    self_metrics: u64,
    period_secs: u32,
    max_datums_per_request: u64,
) -> CostEstimate {
    let custom_metrics = user_metrics + self_metrics;
    let datums_per_period = user_datums + self_metrics;
    let per_request = match max_datums_per_request {
        0 => MAX_DATUMS_PER_REQUEST,
        n => n.min(MAX_DATUMS_PER_REQUEST),
    };
    let requests = datums_per_period.div_ceil(per_request);
    let periods = MONTH_SECS / f64::from(period_secs.max(1));
    let m = metrics_cost(custom_metrics);
    let r = requests as f64 * periods * PRICE_PER_REQUEST;
    CostEstimate {
        custom_metrics,
        self_metrics,
        revision_metrics: 0,
        revision_usd_per_month: 0.0,
        datums_per_period,
        requests_per_period: requests,
        period_secs,
        metrics_usd_per_month: m,
        requests_usd_per_month: r,
        total_usd_per_month: m + r,
        note: "estimate from the last closed period (plus the agent's own metrics when [self_metrics] cloudwatch = true) at us-east-1 list prices; excludes alarms, dashboards, retries and the 1 MB request split",
    }
}

impl CostEstimate {
    /// The same estimate with `n` of its metrics counted as the per-revision series: their
    /// share of the metric price is what dropping them would save.
    pub fn with_revision_metrics(mut self, n: u64) -> Self {
        let n = n.min(self.custom_metrics);
        self.revision_metrics = n;
        self.revision_usd_per_month =
            metrics_cost(self.custom_metrics) - metrics_cost(self.custom_metrics - n);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_prices_fall_by_tier() {
        assert!((metrics_cost(10) - 3.0).abs() < 1e-9);
        assert!((metrics_cost(10_000) - 3000.0).abs() < 1e-6);
        assert!((metrics_cost(10_001) - 3000.10).abs() < 1e-6);
        assert!((metrics_cost(250_000) - (3000.0 + 24_000.0)).abs() < 1e-6);
        assert!((metrics_cost(1_000_001) - (3000.0 + 24_000.0 + 37_500.0 + 0.02)).abs() < 1e-6);
    }

    #[test]
    fn requests_are_counted_per_thousand_datums_every_period() {
        let e = estimate(100, 2500, 0, 60, 1000);
        assert_eq!(e.requests_per_period, 3);
        // 43,833.6 periods a month x 3 requests x $0.00001.
        assert!((e.requests_usd_per_month - 3.0 * 43_833.6 * 0.00001).abs() < 1e-6);
        assert!((e.total_usd_per_month - (30.0 + e.requests_usd_per_month)).abs() < 1e-9);
    }

    #[test]
    fn the_agents_own_metrics_are_billed_like_any_other() {
        let off = estimate(994, 994, 0, 60, 1000);
        let on = estimate(994, 994, 6, 60, 1000);
        assert_eq!((on.custom_metrics, on.self_metrics), (1000, 6));
        // Six metrics at $0.30; their datums still fit in the period's one request.
        assert!((on.metrics_usd_per_month - off.metrics_usd_per_month - 1.80).abs() < 1e-9);
        assert_eq!(on.requests_per_period, 1);
        assert_eq!(estimate(995, 995, 6, 60, 1000).requests_per_period, 2);
    }

    #[test]
    fn requests_follow_the_configured_datums_per_request() {
        // publish.max_datums_per_request = 200: 2,500 datums take 13 calls, not 3.
        let e = estimate(100, 2500, 0, 60, 200);
        assert_eq!(e.requests_per_period, 13);
        assert!((e.requests_usd_per_month - 13.0 * 43_833.6 * 0.00001).abs() < 1e-6);
        // Values above CloudWatch's limit (and 0) are held to it.
        assert_eq!(estimate(100, 2500, 0, 60, 5000).requests_per_period, 3);
        assert_eq!(estimate(100, 2500, 0, 60, 0).requests_per_period, 3);
    }

    #[test]
    fn the_per_revision_series_show_what_they_add() {
        let e = estimate(100, 100, 0, 60, 1000).with_revision_metrics(8);
        assert_eq!(e.revision_metrics, 8);
        assert!((e.revision_usd_per_month - 2.40).abs() < 1e-9);
        assert!(
            (e.metrics_usd_per_month - 30.0).abs() < 1e-9,
            "already in the total"
        );
    }
}
