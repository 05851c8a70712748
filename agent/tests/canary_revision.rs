//! The publishing half of the canary gate with the agent as a real process and the stdout
//! sink: `[canary] publish_revision` adds the per-revision service-level series, and an
//! unknown revision is one warning and no such series (never a reason not to run).

mod common;

use common::{counter, latency, total, Agent, Client};
use tally::wire::AckStatus;

fn send_traffic(agent: &Agent) {
    let mut c = Client::connect(agent.ingest, 42);
    let status = c.send(vec![
        counter("RequestCount", "/a", 90),
        counter("RequestCount", "/b", 10),
        counter("ErrorCount", "/b", 4),
        latency("/a", &[1_000_000, 2_000_000]),
    ]);
    assert_eq!(status, Some(AckStatus::Accepted));
}

#[test]
fn a_configured_revision_adds_per_revision_series_with_no_route() {
    let agent = Agent::start(&[
        "--set",
        "service=shop",
        "--set",
        "environment=prod",
        "--set",
        "canary.publish_revision=true",
        "--set",
        "canary.revision=7",
    ]);
    send_traffic(&agent);
    let (ok, out, err) = agent.terminate();
    assert!(ok, "{err}");
    let rev = [("TaskDefinitionRevision", "7")];
    assert_eq!(total(&out, "RequestCount", &rev, "sum"), 100.0, "{out}");
    assert_eq!(total(&out, "ErrorCount", &rev, "sum"), 4.0);
    assert_eq!(total(&out, "ErrorRate", &rev, "sum"), 4.0);
    assert_eq!(total(&out, "ResponseTime", &rev, "count"), 2.0);
    let with_route = out
        .lines()
        .filter(|l| l.contains("TaskDefinitionRevision") && l.contains("Route"))
        .count();
    assert_eq!(
        with_route, 0,
        "the revision goes on the service-level rollup only"
    );
}

#[test]
fn without_a_revision_the_agent_warns_once_and_publishes_no_per_revision_series() {
    let agent = Agent::start_with(
        &["--set", "canary.publish_revision=true"],
        &[("ECS_CONTAINER_METADATA_URI_V4", "")],
    );
    send_traffic(&agent);
    let (ok, out, err) = agent.terminate();
    assert!(ok, "{err}");
    assert_eq!(
        err.matches("the revision is unknown").count(),
        1,
        "one warning naming the fix: {err}"
    );
    assert!(err.contains("TALLY_CANARY__REVISION"), "{err}");
    assert!(!out.contains("TaskDefinitionRevision"), "{out}");
    assert_eq!(total(&out, "RequestCount", &[("Route", "/a")], "sum"), 90.0);
}
