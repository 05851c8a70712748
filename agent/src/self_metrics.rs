//! The agent's own health in CloudWatch (`[self_metrics] cloudwatch = true`).
//!
//! The agent always keeps its self-metrics in the [`Stats`] registry, served as Prometheus
//! text on `/metrics`. With `[self_metrics] cloudwatch = true` it also publishes a small, fixed
//! set of them with every period, so the agent can be alarmed on and drawn on the dashboard
//! beside the service it serves:
//!
//! | CloudWatch name | unit | value for a period | read from |
//! |---|---|---|---|
//! | `AgentBatchesAccepted` | Count | SDK batches accepted | `tally_agent_batches_total{outcome="accepted"}` |
//! | `AgentDecodeErrors` | Count | frames the decoder refused, every reason | `tally_agent_decode_errors_total` |
//! | `AgentDroppedSamples` | Count | samples not published, every stage and reason | `tally_agent_dropped_samples_total` |
//! | `AgentPublishErrors` | Count | failed PutMetricData attempts, retried ones included | `tally_publish_calls_total` minus `outcome="ok"` |
//! | `AgentActiveSeries` | Count | series published for the period (rollups and derived metrics included, these six not) | the closed period |
//! | `AgentPendingBytes` | Bytes | memory of the datums waiting for CloudWatch, in flight included | `tally_publish_queue_bytes` |
//!
//! # Deltas, not totals
//!
//! The four counters are published as their increase since the previous publish (a period's
//! `Sum` is what happened in it; `Sum` over an hour is the hour's total). The registry starts
//! empty with the process, so the first publish carries everything counted since the agent
//! started. Counters only grow, so a delta is never negative (a saturating subtraction guards
//! it anyway). A counter summed over labels picks up a label set created since the previous
//! publish (a decode-error reason seen for the first time) with its whole value, which is
//! exactly its increase. The two gauges are published as their value when the period closes.
//!
//! # Dimensions
//!
//! `ServiceName` and `Environment` are the configured `service` and `environment` (`unknown`
//! when unset, the value user metrics get when no SDK names them: set both so the agent's
//! metrics sit beside the service's), then the `[ecs]` task dimensions the agent adds to every
//! metric, then `Component=agent` ([`COMPONENT_DIMENSION`]), which tells them apart from user
//! metrics of the same service. Namespace, timestamp, period and storage resolution are those
//! of the period they describe. [`crate::catalog::Catalog`] lists the same identities, so
//! `tally-agent alarms plan` validates alarms on them and the dashboard draws them.
//!
//! There is deliberately no `Reason` dimension: CloudWatch bills every dimension combination as
//! its own custom metric, and the agent has more than twenty drop and decode-error reasons, most
//! of them zero forever. The reason behind a non-zero `AgentDroppedSamples` is on `/metrics`
//! (`tally_agent_dropped_samples_total{reason}`) and in the logs. Samples an SDK dropped
//! before sending are not in `AgentDroppedSamples` either: they are counted in
//! `tally_agent_sdk_dropped_samples_total`.
//!
//! # Which period, and what it costs
//!
//! When a period closes (its end plus `aggregate.grace_ms`), the self-metrics describing the
//! time since the previous publish join that period's [`PeriodData`] and travel with it through
//! the same sink, queue, retries and request limits; the stdout sink prints them in its table.
//! When no user data closed in that period, they go out in a period of their own, but only if
//! something happened (a counter grew or a gauge is not zero), so an idle agent makes no extra
//! PutMetricData call. At shutdown the rest goes with the period closed early.
//!
//! Each value travels as an [`AggregateValue::Derived`] (one value, like `ErrorRate`): it is
//! never counted in `tally_agent_samples_total` nor in the run summary's samples, so the
//! exact accounting of user samples is untouched; in the publisher's counters each datum
//! counts as one sample, as derived metrics do.
//!
//! Cost (us-east-1 list price): six custom metrics, $0.30 each a month for the first 10,000,
//! so $1.80 a month for each distinct `ServiceName` + `Environment` + ECS-dimension combination
//! (tasks of one service share them unless an ECS dimension such as `AvailabilityZone` tells
//! them apart), and six more datums in a request the period makes anyway. That is why
//! `cloudwatch` defaults to `false`. `/cost` includes them when they are on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tally::conventions::{ENVIRONMENT, SERVICE_NAME};
use tally::wire::Unit;

use crate::aggregate::period::{align, unix_secs};
use crate::aggregate::{ClosedPeriod, Settings, UNKNOWN};
use crate::model::{AggregateValue, Dimensions, MetricKey, PeriodData, Text};
use crate::stats::{Stats, DROPPED_SAMPLES};

/// The dimension (name, value) that marks the agent's own metrics.
pub const COMPONENT_DIMENSION: (&str, &str) = ("Component", "agent");

/// `[self_metrics]`: the agent's own metrics in CloudWatch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfMetricsConfig {
    /// Also publish the six self-metrics (`SELF_METRICS`) with every period, with
    /// `Component=agent`. Default `false`: they are six custom metrics, $1.80 a month (us-east-1)
    /// for each ServiceName + Environment + ECS-dimension combination. The Prometheus
    /// `/metrics` endpoint has them (and more) either way.
    pub cloudwatch: bool,
}

/// Where a self-metric's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Increase of a registry counter summed over every label set, except the one given.
    Counter {
        name: &'static str,
        only: Option<(&'static str, &'static str)>,
        except: Option<(&'static str, &'static str)>,
    },
    /// A registry gauge's current value.
    Gauge(&'static str),
    /// The number of series in the period described.
    PeriodSeries,
}

/// One self-metric as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfMetric {
    /// CloudWatch metric name.
    pub name: &'static str,
    /// Unit as published.
    pub unit: Unit,
    source: Source,
}

const fn counter(
    name: &'static str,
    only: Option<(&'static str, &'static str)>,
    except: Option<(&'static str, &'static str)>,
) -> Source {
    Source::Counter { name, only, except }
}

/// Every self-metric published with `[self_metrics] cloudwatch = true`, in name order.
pub const SELF_METRICS: [SelfMetric; 6] = [
    SelfMetric {
        name: "AgentActiveSeries",
        unit: Unit::Count,
        source: Source::PeriodSeries,
    },
    SelfMetric {
        name: "AgentBatchesAccepted",
        unit: Unit::Count,
        source: counter(
            "tally_agent_batches_total",
            Some(("outcome", "accepted")),
            None,
        ),
    },
    SelfMetric {
        name: "AgentDecodeErrors",
        unit: Unit::Count,
        source: counter("tally_agent_decode_errors_total", None, None),
    },
    SelfMetric {
        name: "AgentDroppedSamples",
        unit: Unit::Count,
        source: counter(DROPPED_SAMPLES, None, None),
    },
    SelfMetric {
        name: "AgentPendingBytes",
        unit: Unit::Bytes,
        source: Source::Gauge("tally_publish_queue_bytes"),
    },
    SelfMetric {
        name: "AgentPublishErrors",
        unit: Unit::Count,
        source: counter("tally_publish_calls_total", None, Some(("outcome", "ok"))),
    },
];

/// Whether `name` is one of the agent's self-metrics.
pub fn is_self_metric_name(name: &str) -> bool {
    SELF_METRICS.iter().any(|m| m.name == name)
}

/// The dimensions every self-metric carries for this `service` and `environment` (the
/// configured ones; `unknown` when unset), with the `[ecs]` dimensions `extra` the agent adds
/// to every metric, sorted by name.
pub fn dimensions(
    service: &str,
    environment: &str,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let or_unknown = |v: &str| if v.is_empty() { UNKNOWN } else { v }.to_owned();
    let mut d = vec![
        (SERVICE_NAME.to_owned(), or_unknown(service)),
        (ENVIRONMENT.to_owned(), or_unknown(environment)),
        (
            COMPONENT_DIMENSION.0.to_owned(),
            COMPONENT_DIMENSION.1.to_owned(),
        ),
    ];
    d.extend(extra.iter().cloned());
    d.sort();
    d
}

/// Custom metrics the self-metrics add to the bill (0 when they are off).
pub fn published_count(config: &SelfMetricsConfig) -> u64 {
    if config.cloudwatch {
        SELF_METRICS.len() as u64
    } else {
        0
    }
}

/// Reads the registry each period and attaches the self-metrics to the period they describe.
#[derive(Debug)]
pub struct SelfMetrics {
    stats: Stats,
    dimensions: Dimensions,
    namespace: String,
    period_secs: u32,
    grace: Duration,
    /// Counter readings at the previous publish (zero before the first: the registry starts
    /// empty with the process).
    last: [u64; SELF_METRICS.len()],
    /// Start (Unix seconds) of the last period described.
    described: u64,
}

impl SelfMetrics {
    /// The publisher for `config`, or `None` when `[self_metrics] cloudwatch` is off.
    /// `settings` are the aggregator's (namespace, identity, period, grace and the `[ecs]`
    /// dimensions); `now` is the start time (the first period described is the one that
    /// closes next).
    pub fn new(
        config: &SelfMetricsConfig,
        settings: &Settings,
        stats: &Stats,
        now: SystemTime,
    ) -> Option<Self> {
        if !config.cloudwatch {
            return None;
        }
        if settings.service.is_empty() || settings.environment.is_empty() {
            tracing::warn!(
                "self_metrics.cloudwatch is on but `service` or `environment` is unset: the agent's \
                 own metrics are published with ServiceName/Environment = \"unknown\"; set both \
                 (TALLY_SERVICE, TALLY_ENVIRONMENT) so they sit beside the service's metrics"
            );
        }
        let p = u64::from(settings.period_secs);
        Some(SelfMetrics {
            stats: stats.clone(),
            dimensions: dimensions(
                &settings.service,
                &settings.environment,
                &settings.extra_dimensions,
            )
            .into_iter()
            .map(|(n, v)| (Text::from(n), Text::from(v)))
            .collect(),
            namespace: settings.namespace.clone(),
            period_secs: settings.period_secs,
            grace: settings.grace,
            last: [0; SELF_METRICS.len()],
            // The first period described is the one the agent starts in.
            described: align(unix_secs(now), settings.period_secs).saturating_sub(p),
        })
    }

    /// Start (Unix seconds) of the latest period whose close time (end plus grace) is not
    /// after `now`: the same rule `Aggregator::close_due` closes periods by.
    fn due(&self, now: SystemTime) -> u64 {
        let horizon = unix_secs(now.checked_sub(self.grace).unwrap_or(UNIX_EPOCH));
        align(horizon, self.period_secs).saturating_sub(u64::from(self.period_secs))
    }

    /// When the next period to describe becomes due (`now` when one already is): the ticker
    /// must wake then even when no user period is open.
    pub fn next_due_at(&self, now: SystemTime) -> SystemTime {
        if self.due(now) > self.described {
            return now;
        }
        let next = self.described + 2 * u64::from(self.period_secs);
        UNIX_EPOCH + Duration::from_secs(next) + self.grace
    }

    /// At a tick, after `closed = close_due(now)`: describes the period that became due, if
    /// one did.
    pub fn on_tick(&mut self, now: SystemTime, closed: &mut Vec<ClosedPeriod>) {
        let d = self.due(now);
        if d > self.described {
            self.attach(d, closed);
        }
    }

    /// At shutdown, after `closed = close_all()`: everything since the previous publish goes
    /// with the period that was closed early (the one containing `now`).
    pub fn on_shutdown(&mut self, now: SystemTime, closed: &mut Vec<ClosedPeriod>) {
        let current = align(unix_secs(now), self.period_secs);
        let start = if current > self.described {
            current
        } else {
            self.described + u64::from(self.period_secs)
        };
        self.attach(start, closed);
    }

    /// Adds the self-metrics to the closed period starting at `start`, or pushes a period of
    /// their own when none closed and something happened.
    fn attach(&mut self, start: u64, closed: &mut Vec<ClosedPeriod>) {
        self.described = start;
        let at = closed
            .iter()
            .position(|c| unix_secs(c.data.timestamp) == start);
        let series = at.map_or(0, |i| closed[i].data.metrics.len() as u64);
        let values = self.take(series);
        let metrics = self.datums(&values);
        match at {
            Some(i) => {
                let data = &mut closed[i].data;
                data.metrics.extend(metrics);
                data.metrics.sort_by(|a, b| a.0.cmp(&b.0));
            }
            None if values.iter().any(|v| *v != 0.0) => closed.push(ClosedPeriod {
                data: PeriodData {
                    namespace: self.namespace.clone(),
                    timestamp: UNIX_EPOCH + Duration::from_secs(start),
                    period_secs: self.period_secs,
                    storage_resolution: if self.period_secs < 60 { 1 } else { 60 },
                    metrics,
                },
                samples: 0,
            }),
            None => {}
        }
    }

    /// The value of every self-metric now, in [`SELF_METRICS`] order: counters as their
    /// increase since the previous call (everything since start the first time), gauges as
    /// their current value, `series` for the period's series.
    pub fn take(&mut self, series: u64) -> [f64; SELF_METRICS.len()] {
        let mut out = [0.0; SELF_METRICS.len()];
        for (i, m) in SELF_METRICS.iter().enumerate() {
            out[i] = match m.source {
                Source::Counter { name, only, except } => {
                    let now = match only {
                        Some(l) => self.stats.counter_value(name, &[l]),
                        None => self.stats.counter_sum(name),
                    };
                    let now = match except {
                        Some(l) => now.saturating_sub(self.stats.counter_value(name, &[l])),
                        None => now,
                    };
                    let delta = now.saturating_sub(self.last[i]);
                    self.last[i] = now;
                    delta as f64
                }
                Source::Gauge(name) => self.stats.gauge_value(name, &[]).max(0) as f64,
                Source::PeriodSeries => series as f64,
            };
        }
        out
    }

    fn datums(&self, values: &[f64; SELF_METRICS.len()]) -> Vec<(MetricKey, AggregateValue)> {
        SELF_METRICS
            .iter()
            .zip(values)
            .map(|(m, v)| {
                (
                    MetricKey {
                        name: m.name.into(),
                        unit: m.unit,
                        dimensions: Dimensions::clone(&self.dimensions),
                    },
                    AggregateValue::Derived(*v),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, CatalogMetric};
    use crate::config::Config;

    /// A period start (a multiple of 60).
    const T0: u64 = 1_700_000_040;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    fn config(service: &str) -> Config {
        let mut c = Config {
            namespace: "ECS/Shop".into(),
            service: service.into(),
            environment: if service.is_empty() { "" } else { "prod" }.into(),
            ..Config::default()
        };
        c.self_metrics.cloudwatch = true;
        c
    }

    /// The self-metrics publisher of `c` with the `[ecs]` dimensions `extra`, as the runtime
    /// builds it.
    fn own(
        c: &Config,
        extra: &[(String, String)],
        stats: &Stats,
        now: SystemTime,
    ) -> Option<SelfMetrics> {
        let mut settings = Settings::from_config(c);
        settings.extra_dimensions = extra.to_vec();
        SelfMetrics::new(&c.self_metrics, &settings, stats, now)
    }

    /// The self-metrics' entries in the catalogue of `c`.
    fn catalog_metrics(c: &Config, extra: &[(String, String)]) -> Vec<CatalogMetric> {
        Catalog::from_config_with(c, extra)
            .metrics
            .into_iter()
            .filter(|m| is_self_metric_name(&m.name))
            .collect()
    }

    fn extra() -> Vec<(String, String)> {
        vec![("ClusterName".into(), "blue".into())]
    }

    fn value(p: &PeriodData, name: &str) -> f64 {
        match p.metrics.iter().find(|(k, _)| &*k.name == name) {
            Some((_, AggregateValue::Derived(v))) => *v,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn user_period(start: u64, names: &[&str]) -> ClosedPeriod {
        let metrics = names
            .iter()
            .map(|n| {
                (
                    MetricKey {
                        name: (*n).into(),
                        unit: Unit::Count,
                        dimensions: vec![("ServiceName".into(), "shop".into())].into(),
                    },
                    AggregateValue::Counter(3.0),
                )
            })
            .collect();
        ClosedPeriod {
            data: PeriodData {
                namespace: "ECS/Shop".into(),
                timestamp: UNIX_EPOCH + Duration::from_secs(start),
                period_secs: 60,
                storage_resolution: 60,
                metrics,
            },
            samples: 3 * names.len() as u64,
        }
    }

    fn dropped(stats: &Stats, reason: &str, n: u64) {
        stats
            .counter(DROPPED_SAMPLES, "drops", &[("reason", reason)])
            .add(n);
    }

    fn calls(stats: &Stats, outcome: &str, n: u64) {
        stats
            .counter(
                "tally_publish_calls_total",
                "calls",
                &[("outcome", outcome)],
            )
            .add(n);
    }

    fn index(name: &str) -> usize {
        SELF_METRICS.iter().position(|m| m.name == name).unwrap()
    }

    #[test]
    fn the_first_publish_carries_everything_since_start_and_later_ones_only_the_increase() {
        let stats = Stats::new();
        dropped(&stats, "max_series", 5);
        let mut s = own(&config("shop"), &[], &stats, at(T0, 0)).unwrap();
        let d = index("AgentDroppedSamples");
        assert_eq!(s.take(0)[d], 5.0, "counted before the first publish");
        dropped(&stats, "max_series", 2);
        dropped(&stats, "invalid_name", 4);
        assert_eq!(s.take(0)[d], 6.0, "every reason, the increase only");
        assert_eq!(s.take(0)[d], 0.0, "nothing new: zero, never the total");
    }

    #[test]
    fn publish_errors_count_every_failed_attempt_but_no_success() {
        let stats = Stats::new();
        calls(&stats, "ok", 10);
        calls(&stats, "throttled", 2);
        let mut s = own(&config("shop"), &[], &stats, at(T0, 0)).unwrap();
        let e = index("AgentPublishErrors");
        assert_eq!(s.take(0)[e], 2.0);
        calls(&stats, "ok", 7);
        assert_eq!(s.take(0)[e], 0.0);
        // An outcome seen for the first time counts with its whole value.
        calls(&stats, "network", 3);
        calls(&stats, "throttled", 1);
        assert_eq!(s.take(0)[e], 4.0);
    }

    #[test]
    fn accepted_batches_leave_out_the_other_outcomes_and_gauges_are_current_values() {
        let stats = Stats::new();
        let b = |o| stats.counter("tally_agent_batches_total", "b", &[("outcome", o)]);
        b("accepted").add(9);
        b("duplicate").add(4);
        stats.gauge("tally_publish_queue_bytes", "q", &[]).set(4096);
        let mut s = own(&config("shop"), &[], &stats, at(T0, 0)).unwrap();
        let v = s.take(17);
        assert_eq!(v[index("AgentBatchesAccepted")], 9.0);
        assert_eq!(v[index("AgentPendingBytes")], 4096.0);
        assert_eq!(v[index("AgentActiveSeries")], 17.0);
        let v = s.take(0);
        assert_eq!(
            v[index("AgentPendingBytes")],
            4096.0,
            "a gauge is not a delta"
        );
        assert_eq!(v[index("AgentBatchesAccepted")], 0.0);
    }

    #[test]
    fn self_metrics_join_the_period_they_describe_with_the_agents_dimensions() {
        let stats = Stats::new();
        dropped(&stats, "max_series", 7);
        let mut s = own(&config("shop"), &extra(), &stats, at(T0 + 30, 0)).unwrap();
        // The period [T0, T0+60) closes at T0+62 (2 s grace); nothing is due before.
        assert_eq!(s.next_due_at(at(T0 + 30, 0)), at(T0 + 62, 0));
        let mut early = vec![];
        s.on_tick(at(T0 + 61, 999), &mut early);
        assert!(early.is_empty());
        let mut closed = vec![
            user_period(T0 - 60, &["Old"]),
            user_period(T0, &["Zeta", "Alpha"]),
        ];
        s.on_tick(at(T0 + 62, 0), &mut closed);
        assert_eq!(closed.len(), 2);
        assert_eq!(
            closed[0].data.metrics.len(),
            1,
            "an older period is not described"
        );
        let p = &closed[1];
        assert_eq!(p.samples, 6, "self-metrics are not user samples");
        let names: Vec<&str> = p.data.metrics.iter().map(|(k, _)| &*k.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "metrics stay sorted by key");
        assert_eq!(names.len(), 2 + SELF_METRICS.len());
        assert_eq!(value(&p.data, "AgentDroppedSamples"), 7.0);
        assert_eq!(value(&p.data, "AgentActiveSeries"), 2.0);
        let own = &p
            .data
            .metrics
            .iter()
            .find(|(k, _)| &*k.name == "AgentDecodeErrors")
            .unwrap()
            .0;
        assert_eq!(
            own.dimension_pairs(),
            vec![
                ("ClusterName".to_owned(), "blue".to_owned()),
                ("Component".to_owned(), "agent".to_owned()),
                ("Environment".to_owned(), "prod".to_owned()),
                ("ServiceName".to_owned(), "shop".to_owned()),
            ]
        );
        // The same period is never described twice.
        let mut again = vec![];
        dropped(&stats, "max_series", 1);
        s.on_tick(at(T0 + 63, 0), &mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn a_quiet_period_publishes_nothing_and_a_busy_one_without_user_data_gets_its_own() {
        let stats = Stats::new();
        let mut s = own(&config("shop"), &[], &stats, at(T0, 0)).unwrap();
        let mut closed = vec![];
        s.on_tick(at(T0 + 62, 0), &mut closed);
        assert!(
            closed.is_empty(),
            "an idle agent makes no PutMetricData call"
        );
        stats
            .counter(
                "tally_agent_decode_errors_total",
                "d",
                &[("reason", "bad_magic")],
            )
            .inc();
        s.on_tick(at(T0 + 122, 5), &mut closed);
        assert_eq!(closed.len(), 1);
        let p = &closed[0];
        assert_eq!(p.samples, 0);
        assert_eq!(p.data.timestamp, at(T0 + 60, 0));
        assert_eq!((p.data.period_secs, p.data.storage_resolution), (60, 60));
        assert_eq!(p.data.namespace, "ECS/Shop");
        assert_eq!(value(&p.data, "AgentDecodeErrors"), 1.0);
        assert_eq!(value(&p.data, "AgentActiveSeries"), 0.0);
    }

    #[test]
    fn at_shutdown_the_rest_goes_with_the_period_closed_early() {
        let stats = Stats::new();
        let mut s = own(&config("shop"), &[], &stats, at(T0 + 5, 0)).unwrap();
        dropped(&stats, "shutdown_deadline", 3);
        // Stopped 1 s into the next period, inside the previous one's grace: both closed now.
        let mut closed = vec![user_period(T0, &["A"]), user_period(T0 + 60, &["B"])];
        s.on_shutdown(at(T0 + 61, 0), &mut closed);
        assert_eq!(closed[0].data.metrics.len(), 1);
        assert_eq!(value(&closed[1].data, "AgentDroppedSamples"), 3.0);
        // Nothing closed early: a period of their own at the current period.
        dropped(&stats, "shutdown_deadline", 1);
        let mut none = vec![];
        s.on_shutdown(at(T0 + 61, 500), &mut none);
        assert_eq!(none.len(), 1);
        assert!(
            none[0].data.timestamp > at(T0 + 60, 0),
            "never the same period twice"
        );
        assert_eq!(value(&none[0].data, "AgentDroppedSamples"), 1.0);
    }

    #[test]
    fn high_resolution_periods_are_described_at_their_own_resolution() {
        let mut c = config("shop");
        c.period_secs = 10;
        let stats = Stats::new();
        let mut s = own(&c, &[], &stats, at(T0, 0)).unwrap();
        dropped(&stats, "max_series", 1);
        let mut closed = vec![];
        // 10 s periods get 2 s of grace too: [T0, T0+10) is due at T0+12.
        assert_eq!(s.next_due_at(at(T0, 0)), at(T0 + 12, 0));
        s.on_tick(at(T0 + 12, 0), &mut closed);
        assert_eq!(closed[0].data.timestamp, at(T0, 0));
        assert_eq!(closed[0].data.storage_resolution, 1);
    }

    #[test]
    fn off_by_default_and_unknown_identity_when_service_is_unset() {
        let stats = Stats::new();
        assert!(own(&Config::default(), &[], &stats, at(T0, 0)).is_none());
        assert!(catalog_metrics(&Config::default(), &[]).is_empty());
        assert_eq!(published_count(&Config::default().self_metrics), 0);
        let d = dimensions("", "", &[]);
        assert!(
            d.contains(&("ServiceName".into(), "unknown".into())),
            "{d:?}"
        );
        assert!(
            d.contains(&("Environment".into(), "unknown".into())),
            "{d:?}"
        );
    }

    #[test]
    fn an_alarm_on_agent_drops_watches_exactly_the_published_dimensions() {
        use crate::alarms::desired::{desired_alarms, AlarmTarget};
        // The example of docs/configuration.md.
        let c: Config = toml::from_str(
            r#"
            namespace = "ECS/Shop"
            service = "shop"
            environment = "prod"
            [self_metrics]
            cloudwatch = true
            [[alarms]]
            name = "agent-drops"
            metric = "AgentDroppedSamples"
            statistic = "Sum"
            comparison = "GreaterThanThreshold"
            threshold = 0.0
            treat_missing_data = "notBreaching"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let catalog = crate::catalog::Catalog::from_config_with(&c, &extra());
        let target = crate::alarms::Target {
            namespace: &c.namespace,
            service: &c.service,
            environment: &c.environment,
            period_secs: c.period_secs,
            catalog: &catalog,
        };
        let alarms = desired_alarms(&c.alarms_config(), &target).unwrap();
        let AlarmTarget::Metric { metric, .. } = &alarms[0].target else {
            panic!("{:?}", alarms[0].target);
        };
        assert_eq!(
            metric.dimensions,
            dimensions(&c.service, &c.environment, &extra())
        );
        // Off: the same alarm names a metric that is never published.
        let mut off = c.clone();
        off.self_metrics.cloudwatch = false;
        let catalog = crate::catalog::Catalog::from_config_with(&off, &extra());
        let target = crate::alarms::Target {
            catalog: &catalog,
            ..target
        };
        let e = desired_alarms(&off.alarms_config(), &target).unwrap_err();
        assert!(e.to_string().contains("AgentDroppedSamples"), "{e}");
    }

    #[test]
    fn the_catalogue_lists_each_self_metric_with_one_fixed_dimension_set() {
        let c = config("shop");
        let m = catalog_metrics(&c, &extra());
        assert_eq!(m.len(), SELF_METRICS.len());
        assert_eq!(published_count(&c.self_metrics), 6);
        let pending = m.iter().find(|m| m.name == "AgentPendingBytes").unwrap();
        assert_eq!(pending.unit, "Bytes");
        assert_eq!(
            pending.dimension_sets,
            vec![vec![
                ("ClusterName".to_owned(), Some("blue".to_owned())),
                ("Component".to_owned(), Some("agent".to_owned())),
                ("Environment".to_owned(), Some("prod".to_owned())),
                ("ServiceName".to_owned(), Some("shop".to_owned())),
            ]]
        );
        assert!(is_self_metric_name("AgentDroppedSamples"));
        assert!(!is_self_metric_name("RequestCount"));
    }
}
