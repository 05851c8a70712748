//! The canary gate's latency path from GetMetricData answers (`tests/fixtures/canary/`):
//! LocalStack cannot answer percentiles, so `examples/tests/canary_localstack.rs` turns latency
//! off and these answers, in the shape CloudWatch gives (see the fixtures' README), go through
//! the same code the command runs after its GetMetricData call: `query::sides` then
//! `verdict::evaluate` with the default `[canary]` limits (p99, 1 s absolute, 1.5x relative).

use aws_sdk_cloudwatch::types::{MetricDataResult, StatusCode};
use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use serde_json::Value;
use tally_agent::canary::query::{sides, Side};
use tally_agent::canary::verdict::{evaluate, Outcome, Verdict};
use tally_agent::canary::CanaryConfig;

/// A fixture's `MetricDataResults`, as the SDK would have decoded them.
fn answer(file: &str) -> Vec<MetricDataResult> {
    let path = format!(
        "{}/tests/fixtures/canary/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["MetricDataResults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            MetricDataResult::builder()
                .id(r["Id"].as_str().unwrap())
                .label(r["Label"].as_str().unwrap())
                .set_timestamps(Some(
                    r["Timestamps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        // The CLI prints `+00:00`; Smithy's parser takes UTC as `Z` only.
                        .map(|t| {
                            let t = t.as_str().unwrap().replace("+00:00", "Z");
                            DateTime::from_str(&t, Format::DateTime).unwrap()
                        })
                        .collect(),
                ))
                .set_values(Some(
                    r["Values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect(),
                ))
                .status_code(StatusCode::from(r["StatusCode"].as_str().unwrap()))
                .build()
        })
        .collect()
}

fn decide(file: &str) -> (Verdict, Side, Vec<(String, Outcome)>) {
    let (canary, baseline) = sides(&answer(file), "42", "41").expect("a usable answer");
    // Milliseconds published: 1 unit = 1 ms.
    let (verdict, checks) = evaluate(&CanaryConfig::default(), &canary, &baseline, 1.0);
    let outcomes = checks.into_iter().map(|c| (c.name, c.outcome)).collect();
    (verdict, canary, outcomes)
}

fn outcome(outcomes: &[(String, Outcome)], name: &str) -> Outcome {
    outcomes
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no check {name}: {outcomes:?}"))
        .1
}

#[test]
fn a_canary_p99_over_one_second_is_unhealthy() {
    let (verdict, canary, o) = decide("p99-regression.json");
    assert_eq!(canary.latency, Some(1450.0));
    assert_eq!(verdict, Verdict::Unhealthy);
    assert_eq!(outcome(&o, "latency_p99_ms"), Outcome::Fail);
    assert_eq!(outcome(&o, "error_rate_percent"), Outcome::Pass);
}

#[test]
fn a_canary_p99_twice_the_baselines_is_unhealthy_below_the_absolute_limit() {
    let (verdict, _, o) = decide("p99-relative-regression.json");
    assert_eq!(verdict, Verdict::Unhealthy);
    assert_eq!(outcome(&o, "latency_p99_ms"), Outcome::Pass);
    assert_eq!(outcome(&o, "latency_p99_ratio"), Outcome::Fail);
}

#[test]
fn a_canary_like_its_baseline_is_healthy_on_every_check() {
    let (verdict, _, o) = decide("healthy.json");
    assert_eq!(verdict, Verdict::Healthy, "{o:?}");
    assert!(o.iter().all(|(_, c)| *c == Outcome::Pass), "{o:?}");
    assert_eq!(
        o.len(),
        5,
        "requests, two error-rate and two latency checks: {o:?}"
    );
}

#[test]
fn a_window_answered_in_two_points_adds_counts_and_judges_the_slower_p99() {
    let (verdict, canary, o) = decide("split-window.json");
    assert_eq!((canary.requests, canary.errors), (4800.0, 9.0));
    assert_eq!(
        canary.latency,
        Some(1210.0),
        "the larger p99 bounds the window's from above"
    );
    assert_eq!(verdict, Verdict::Unhealthy);
    assert_eq!(outcome(&o, "latency_p99_ms"), Outcome::Fail);
}

#[test]
fn no_latency_answer_for_a_side_is_not_enough_data() {
    let (verdict, canary, o) = decide("no-latency-data.json");
    assert_eq!(canary.latency, None);
    assert_eq!(verdict, Verdict::NotEnoughData);
    assert_eq!(outcome(&o, "latency_p99_ms"), Outcome::NoData);
}

#[test]
fn a_forbidden_query_is_an_error_not_a_verdict() {
    let err = sides(&answer("forbidden.json"), "42", "41").unwrap_err();
    assert!(err.to_string().contains("Forbidden"), "{err}");
    assert!(
        err.to_string().contains("cloudwatch:GetMetricData"),
        "{err}"
    );
}
