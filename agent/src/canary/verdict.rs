//! The decision: healthy, unhealthy or not enough data, with every check that led to it.
//!
//! - Not enough data (exit 2) when either side served fewer than `min_requests` in the
//!   window, or latency is compared and a side has no latency value: no verdict is drawn
//!   from a handful of requests, whichever way they went.
//! - Unhealthy (exit 1) when any limit is crossed:
//!   - the canary's error rate is above `max_error_rate_percent` (absolute);
//!   - it is more than `max_error_rate_increase` points above the baseline's, and the
//!     difference is significant: a one-sided two-proportion z-test at 99% (z > 2.326), so
//!     that 3 errors in 200 requests against 1 in 200 is not a rollback;
//!   - the canary's latency statistic is above `max_latency_ms` (absolute);
//!   - it is above `max_latency_ratio` times the baseline's and more than
//!     `latency_slack_ms` above it.
//! - Healthy (exit 0) otherwise.

use std::fmt;

use serde::Serialize;

use super::query::Side;
use super::CanaryConfig;

/// One-sided 99% quantile of the standard normal distribution.
pub const Z_99: f64 = 2.326;

/// The gate's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed: promote.
    Healthy,
    /// A check failed: roll back.
    Unhealthy,
    /// Too little traffic to decide: wait and ask again.
    NotEnoughData,
}

impl Verdict {
    /// The process exit code: healthy 0, unhealthy 1, not enough data 2.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Healthy => 0,
            Verdict::Unhealthy => 1,
            Verdict::NotEnoughData => 2,
        }
    }
}

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Within its limit.
    Pass,
    /// Over its limit.
    Fail,
    /// Not evaluated: not enough data.
    NoData,
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What is compared (`requests`, `error_rate_percent`, `latency_p99_ms`, ...).
    pub name: String,
    /// The canary's value.
    pub canary: Option<f64>,
    /// The baseline's value.
    pub baseline: Option<f64>,
    /// The limit, in words.
    pub limit: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Why, in words.
    pub detail: String,
}

/// One-sided two-proportion z statistic of `e1/n1` above `e2/n2` (pooled variance). 0 when
/// the pooled rate is 0 or 1: then both rates are equal.
pub fn z_statistic(e1: f64, n1: f64, e2: f64, n2: f64) -> f64 {
    let p = (e1 + e2) / (n1 + n2);
    let se = (p * (1.0 - p) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se > 0.0 {
        (e1 / n1 - e2 / n2) / se
    } else {
        0.0
    }
}

/// Decides. `to_ms` converts the published latency unit to milliseconds.
pub fn evaluate(
    cfg: &CanaryConfig,
    canary: &Side,
    baseline: &Side,
    to_ms: f64,
) -> (Verdict, Vec<Check>) {
    let mut checks = Vec::new();
    let enough =
        canary.requests >= cfg.min_requests as f64 && baseline.requests >= cfg.min_requests as f64;
    checks.push(Check {
        name: "requests".into(),
        canary: Some(canary.requests),
        baseline: Some(baseline.requests),
        limit: format!(">= {} on each side", cfg.min_requests),
        outcome: if enough {
            Outcome::Pass
        } else {
            Outcome::NoData
        },
        detail: if enough {
            "enough traffic for a verdict".into()
        } else {
            "too few requests for any verdict: let more traffic reach both sides and ask again"
                .into()
        },
    });

    let (cr, br) = (canary.error_rate(), baseline.error_rate());
    let mut rate = |name: &str, limit: String, fail: Option<bool>, detail: String| {
        checks.push(Check {
            name: name.into(),
            canary: cr,
            baseline: br,
            limit,
            outcome: match (enough, fail) {
                (true, Some(true)) => Outcome::Fail,
                (true, Some(false)) => Outcome::Pass,
                _ => Outcome::NoData,
            },
            detail,
        });
    };
    let abs_fail = cr.map(|r| r > cfg.max_error_rate_percent);
    rate(
        "error_rate_percent",
        format!("<= {}%", cfg.max_error_rate_percent),
        abs_fail,
        match cr {
            Some(r) => format!("canary {r:.2}%"),
            None => "no requests".into(),
        },
    );
    let (rel_fail, rel_detail) = match (cr, br) {
        (Some(c), Some(b)) => {
            let z = z_statistic(
                canary.errors,
                canary.requests,
                baseline.errors,
                baseline.requests,
            );
            let diff = c - b;
            (
                Some(diff > cfg.max_error_rate_increase && z > Z_99),
                format!("{diff:+.2} points, z = {z:.2} (significant above {Z_99})"),
            )
        }
        _ => (None, "no requests".into()),
    };
    rate(
        "error_rate_increase_points",
        format!(
            "<= baseline + {} points (or not significant at 99%)",
            cfg.max_error_rate_increase
        ),
        rel_fail,
        rel_detail,
    );

    if cfg.check_latency {
        let stat = &cfg.latency_statistic;
        let (cl, bl) = (
            canary.latency.map(|v| v * to_ms),
            baseline.latency.map(|v| v * to_ms),
        );
        let have = enough && cl.is_some() && bl.is_some();
        let outcome = |fail: bool| match (have, fail) {
            (false, _) => Outcome::NoData,
            (true, true) => Outcome::Fail,
            (true, false) => Outcome::Pass,
        };
        let c = cl.unwrap_or(f64::NAN);
        let b = bl.unwrap_or(f64::NAN);
        checks.push(Check {
            name: format!("latency_{stat}_ms"),
            canary: cl,
            baseline: bl,
            limit: format!("<= {} ms", cfg.max_latency_ms),
            outcome: outcome(c > cfg.max_latency_ms),
            detail: if cl.is_some() {
                format!("canary {c:.1} ms")
            } else {
                "no latency data".into()
            },
        });
        let rel = c > b * cfg.max_latency_ratio && c - b > cfg.latency_slack_ms;
        checks.push(Check {
            name: format!("latency_{stat}_ratio"),
            canary: cl,
            baseline: bl,
            limit: format!(
                "<= {}x baseline (or within {} ms of it)",
                cfg.max_latency_ratio, cfg.latency_slack_ms
            ),
            outcome: outcome(rel),
            detail: if have {
                format!("{:.2}x, {:+.1} ms", c / b, c - b)
            } else {
                "no latency data on one side".into()
            },
        });
    }

    let verdict = if checks.iter().any(|c| c.outcome == Outcome::Fail) {
        Verdict::Unhealthy
    } else if checks.iter().any(|c| c.outcome == Outcome::NoData) {
        Verdict::NotEnoughData
    } else {
        Verdict::Healthy
    };
    (verdict, checks)
}

/// What `tally-agent canary` prints (as a table, or as JSON with `--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The outcome.
    pub verdict: Verdict,
    /// The exit code it maps to.
    pub exit_code: u8,
    /// Namespace read.
    pub namespace: String,
    /// Dimensions both sides share.
    pub dimensions: Vec<(String, String)>,
    /// The dimension that tells the sides apart.
    pub dimension: String,
    /// The canary.
    pub canary: Side,
    /// The baseline.
    pub baseline: Side,
    /// Window length.
    pub window_secs: u32,
    /// Window end, Unix seconds.
    pub window_end: u64,
    /// Every check.
    pub checks: Vec<Check>,
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self
            .dimensions
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(
            f,
            "canary {d}={} vs baseline {d}={} ({}; {}), {} s window ending at {}",
            self.canary.value,
            self.baseline.value,
            self.namespace,
            dims.join(" "),
            self.window_secs,
            self.window_end,
            d = self.dimension,
        )?;
        writeln!(
            f,
            "{:<28} {:>10} {:>10}  {:<7} {:<52} detail",
            "check", "canary", "baseline", "result", "limit"
        )?;
        for c in &self.checks {
            let outcome = match c.outcome {
                Outcome::Pass => "ok",
                Outcome::Fail => "FAIL",
                Outcome::NoData => "no data",
            };
            writeln!(
                f,
                "{:<28} {:>10} {:>10}  {:<7} {:<52} {}",
                c.name,
                cell(c.canary),
                cell(c.baseline),
                outcome,
                c.limit,
                c.detail
            )?;
        }
        let word = match self.verdict {
            Verdict::Healthy => "HEALTHY",
            Verdict::Unhealthy => "UNHEALTHY",
            Verdict::NotEnoughData => "NOT ENOUGH DATA",
        };
        writeln!(f, "verdict: {word} (exit {})", self.exit_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(requests: f64, errors: f64, latency: Option<f64>) -> Side {
        Side {
            value: String::new(),
            requests,
            errors,
            latency,
        }
    }

    fn verdict(c: Side, b: Side) -> Verdict {
        evaluate(&CanaryConfig::default(), &c, &b, 1.0).0
    }

    #[test]
    fn too_few_requests_on_either_side_is_never_a_verdict_even_when_all_failed() {
        assert_eq!(
            verdict(side(50.0, 50.0, Some(10.0)), side(1000.0, 0.0, Some(10.0))),
            Verdict::NotEnoughData
        );
        assert_eq!(
            verdict(side(1000.0, 0.0, Some(10.0)), side(199.0, 0.0, Some(10.0))),
            Verdict::NotEnoughData
        );
    }

    #[test]
    fn the_playbooks_absolute_limits_fail_a_canary_whatever_the_baseline() {
        // 6% errors with an equally bad baseline: absolute limit.
        assert_eq!(
            verdict(
                side(1000.0, 60.0, Some(10.0)),
                side(1000.0, 60.0, Some(10.0))
            ),
            Verdict::Unhealthy
        );
        // p99 of 1.2 s.
        assert_eq!(
            verdict(
                side(1000.0, 0.0, Some(1200.0)),
                side(1000.0, 0.0, Some(1100.0))
            ),
            Verdict::Unhealthy
        );
        assert_eq!(
            verdict(
                side(1000.0, 50.0, Some(1000.0)),
                side(1000.0, 50.0, Some(1000.0))
            ),
            Verdict::Healthy
        );
    }

    #[test]
    fn a_significant_rise_over_the_baseline_fails_below_the_absolute_limit() {
        // 3.3% vs 0%: under 5%, but +3.3 points and z ~ 5.8.
        assert_eq!(
            verdict(
                side(1000.0, 33.0, Some(10.0)),
                side(1000.0, 0.0, Some(10.0))
            ),
            Verdict::Unhealthy
        );
        // 3 in 200 vs 1 in 200: +1 point, not significant.
        assert_eq!(
            verdict(side(200.0, 3.0, Some(10.0)), side(200.0, 1.0, Some(10.0))),
            Verdict::Healthy
        );
        // Within the allowed increase.
        assert_eq!(
            verdict(
                side(10_000.0, 150.0, Some(10.0)),
                side(10_000.0, 100.0, Some(10.0))
            ),
            Verdict::Healthy
        );
    }

    #[test]
    fn latency_fails_on_ratio_only_beyond_the_slack() {
        // 4 ms vs 2 ms: twice as slow, but 2 ms is within the 50 ms slack.
        assert_eq!(
            verdict(side(1000.0, 0.0, Some(4.0)), side(1000.0, 0.0, Some(2.0))),
            Verdict::Healthy
        );
        // 400 ms vs 200 ms.
        assert_eq!(
            verdict(
                side(1000.0, 0.0, Some(400.0)),
                side(1000.0, 0.0, Some(200.0))
            ),
            Verdict::Unhealthy
        );
        // Missing latency on one side is not enough data.
        assert_eq!(
            verdict(side(1000.0, 0.0, None), side(1000.0, 0.0, Some(200.0))),
            Verdict::NotEnoughData
        );
        // Seconds published: 0.4 s converted to 400 ms.
        let (v, checks) = evaluate(
            &CanaryConfig::default(),
            &side(1000.0, 0.0, Some(0.4)),
            &side(1000.0, 0.0, Some(0.2)),
            1000.0,
        );
        assert_eq!(v, Verdict::Unhealthy);
        assert_eq!(checks[3].canary, Some(400.0));
    }

    #[test]
    fn exit_codes_are_healthy_0_unhealthy_1_not_enough_data_2() {
        assert_eq!(
            [Verdict::Healthy, Verdict::Unhealthy, Verdict::NotEnoughData].map(Verdict::exit_code),
            [0, 1, 2]
        );
    }

    #[test]
    fn the_z_statistic_matches_a_hand_computation_and_handles_zero_variance() {
        // p1 = 0.1, p2 = 0.05, p = 0.075, se = sqrt(0.075 * 0.925 * 0.02) = 0.037249.
        assert!((z_statistic(10.0, 100.0, 5.0, 100.0) - 1.3423).abs() < 1e-3);
        // 5 in 100 vs 0 in 100: z = 2.26, just short of significance.
        assert!((z_statistic(5.0, 100.0, 0.0, 100.0) - 2.2646).abs() < 1e-3);
        assert_eq!(z_statistic(0.0, 100.0, 0.0, 100.0), 0.0);
        assert_eq!(z_statistic(100.0, 100.0, 100.0, 100.0), 0.0);
        assert!((z_statistic(100.0, 100.0, 0.0, 100.0) - 14.1421).abs() < 1e-3);
    }
}
