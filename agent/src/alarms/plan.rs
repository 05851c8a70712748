//! The diff between the alarms the configuration declares and the managed alarms CloudWatch
//! holds: create / update / delete / keep / unchanged, with the monthly cost.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::desired::AlarmDefinition;

/// What reconciling does to one alarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AlarmAction {
    /// Declared, absent from CloudWatch: PutMetricAlarm.
    Create,
    /// Declared and present with different fields: one PutMetricAlarm.
    Update {
        /// The fields that differ.
        fields: Vec<&'static str>,
    },
    /// Declared and identical: no call.
    Unchanged,
    /// Managed (name has the prefix) but no longer declared, and pruning is on: DeleteAlarms.
    Delete,
    /// Managed but no longer declared, pruning off: left alone.
    Keep,
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmChange {
    /// AlarmName.
    pub name: String,
    /// What happens.
    pub action: AlarmAction,
    /// The alarm as it will be after apply (absent for a delete).
    pub desired: Option<AlarmDefinition>,
    /// Estimated monthly price of the alarm after apply (0 for a delete), USD.
    pub monthly_cost_usd: f64,
}

/// What reconciling does to the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DashboardAction {
    /// Absent: PutDashboard.
    Create,
    /// Present with another body: PutDashboard.
    Update,
    /// Present with the same body (compared as JSON, not as text): no call.
    Unchanged,
}

/// The dashboard part of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DashboardChange {
    /// DashboardName.
    pub name: String,
    /// What happens.
    pub action: DashboardAction,
    /// The body that would be written.
    pub body: serde_json::Value,
    /// Widgets left out because the agent publishes none of their metrics.
    pub notes: Vec<String>,
}

/// A dry run of `alarms apply`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Managed name prefix.
    pub prefix: String,
    /// Whether undeclared managed alarms are deleted.
    pub prune: bool,
    /// One entry per declared or managed alarm, sorted by name.
    pub alarms: Vec<AlarmChange>,
    /// The dashboard, when `[dashboard] enabled`.
    pub dashboard: Option<DashboardChange>,
    /// Monthly price of the managed alarms today, USD.
    pub current_monthly_usd: f64,
    /// Monthly price of the managed alarms after apply, USD.
    pub planned_monthly_usd: f64,
}

impl Plan {
    /// Number of alarms with this kind of action.
    pub fn count(&self, pred: impl Fn(&AlarmAction) -> bool) -> usize {
        self.alarms.iter().filter(|c| pred(&c.action)).count()
    }

    /// Whether apply would make no write call.
    pub fn is_noop(&self) -> bool {
        self.alarms
            .iter()
            .all(|c| matches!(c.action, AlarmAction::Unchanged | AlarmAction::Keep))
            && self
                .dashboard
                .as_ref()
                .is_none_or(|d| d.action == DashboardAction::Unchanged)
    }
}

/// Diffs declared alarms against the managed alarms that exist (both in normal form).
/// `existing` must hold only alarms whose names carry the managed prefix. With `prune`, an
/// undeclared alarm is deleted only when `owned` says it is this agent's (see
/// [`AlarmDefinition::watches_only`]); others are kept.
pub fn diff(
    desired: &[AlarmDefinition],
    existing: &[AlarmDefinition],
    prune: bool,
    owned: impl Fn(&AlarmDefinition) -> bool,
) -> Vec<AlarmChange> {
    let existing: BTreeMap<&str, &AlarmDefinition> =
        existing.iter().map(|a| (a.name.as_str(), a)).collect();
    let declared: BTreeMap<&str, &AlarmDefinition> =
        desired.iter().map(|a| (a.name.as_str(), a)).collect();
    let mut out = Vec::with_capacity(declared.len() + existing.len());
    for (name, d) in &declared {
        let action = match existing.get(name) {
            None => AlarmAction::Create,
            Some(e) => {
                let fields = d.changed_fields(e);
                if fields.is_empty() {
                    AlarmAction::Unchanged
                } else {
                    AlarmAction::Update { fields }
                }
            }
        };
        out.push(AlarmChange {
            name: (*name).to_owned(),
            action,
            desired: Some((*d).clone()),
            monthly_cost_usd: d.monthly_cost_usd(),
        });
    }
    for (name, e) in &existing {
        if declared.contains_key(name) {
            continue;
        }
        let prune = prune && owned(e);
        out.push(AlarmChange {
            name: (*name).to_owned(),
            action: if prune {
                AlarmAction::Delete
            } else {
                AlarmAction::Keep
            },
            desired: if prune { None } else { Some((*e).clone()) },
            monthly_cost_usd: if prune { 0.0 } else { e.monthly_cost_usd() },
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Alarms managed by prefix {:?} (prune {}):",
            self.prefix,
            if self.prune { "on" } else { "off" }
        )?;
        if self.alarms.is_empty() {
            writeln!(f, "  (none declared, none found)")?;
        }
        for c in &self.alarms {
            let what = match &c.action {
                AlarmAction::Create => "create".to_owned(),
                AlarmAction::Update { fields } => format!("update ({})", fields.join(", ")),
                AlarmAction::Unchanged => "unchanged".to_owned(),
                AlarmAction::Delete => "delete".to_owned(),
                AlarmAction::Keep => {
                    "keep (no longer declared; set [alarm_management] prune = true to delete)"
                        .to_owned()
                }
            };
            writeln!(
                f,
                "  {:<10} {}  ${:.2}/month",
                what.split(' ').next().unwrap_or_default(),
                c.name,
                c.monthly_cost_usd
            )?;
            if what.contains(' ') {
                writeln!(
                    f,
                    "             {}",
                    &what[what.find(' ').unwrap_or(0) + 1..]
                )?;
            }
        }
        if let Some(d) = &self.dashboard {
            let a = match d.action {
                DashboardAction::Create => "create",
                DashboardAction::Update => "update",
                DashboardAction::Unchanged => "unchanged",
            };
            writeln!(f, "Dashboard:\n  {a:<10} {}", d.name)?;
            for n in &d.notes {
                writeln!(f, "             note: {n}")?;
            }
        }
        let n = |p: fn(&AlarmAction) -> bool| self.count(p);
        writeln!(
            f,
            "Summary: {} to create, {} to update, {} to delete, {} unchanged, {} kept.",
            n(|a| *a == AlarmAction::Create),
            n(|a| matches!(a, AlarmAction::Update { .. })),
            n(|a| *a == AlarmAction::Delete),
            n(|a| *a == AlarmAction::Unchanged),
            n(|a| *a == AlarmAction::Keep),
        )?;
        write!(
            f,
            "Estimated alarm cost: ${:.2}/month now, ${:.2}/month after apply \
             ($0.10 per standard alarm metric, $0.30 high-resolution, us-east-1)",
            self.current_monthly_usd, self.planned_monthly_usd
        )?;
        if self.dashboard.is_some() {
            write!(
                f,
                "; the dashboard adds $3.00/month beyond the account's first three"
            )?;
        }
        writeln!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarms::desired::{AlarmStat, AlarmTarget, MetricId};
    use proptest::prelude::*;

    fn alarm(name: String, threshold: f64, period: i32, actions: Vec<String>) -> AlarmDefinition {
        AlarmDefinition {
            name,
            description: "d".into(),
            target: AlarmTarget::Metric {
                metric: MetricId {
                    namespace: "N".into(),
                    name: "RequestCount".into(),
                    dimensions: vec![("ServiceName".into(), "web".into())],
                },
                stat: AlarmStat::Standard("Sum".into()),
                period,
                unit: None,
            },
            threshold,
            comparison: "LessThanThreshold".into(),
            evaluation_periods: 2,
            datapoints_to_alarm: 2,
            treat_missing_data: "breaching".into(),
            actions_enabled: true,
            alarm_actions: actions,
            ok_actions: vec![],
            insufficient_data_actions: vec![],
        }
    }

    fn arb_alarm() -> impl Strategy<Value = AlarmDefinition> {
        (
            "[a-e]{1,3}",
            -1000.0f64..1000.0,
            prop::sample::select(vec![10, 60, 300]),
            prop::collection::vec("arn:[a-c]{1,2}", 0..3),
        )
            .prop_map(|(n, t, p, mut a)| {
                a.sort();
                a.dedup();
                alarm(format!("tally-{n}"), t, p, a)
            })
    }

    fn by_name(v: Vec<AlarmDefinition>) -> BTreeMap<String, AlarmDefinition> {
        v.into_iter().map(|a| (a.name.clone(), a)).collect()
    }

    /// Applies a plan to a model of CloudWatch, as `apply` does.
    fn simulate(
        existing: &BTreeMap<String, AlarmDefinition>,
        plan: &[AlarmChange],
    ) -> (BTreeMap<String, AlarmDefinition>, usize) {
        let mut state = existing.clone();
        let mut writes = 0;
        for c in plan {
            match c.action {
                AlarmAction::Create | AlarmAction::Update { .. } => {
                    state.insert(c.name.clone(), c.desired.clone().unwrap());
                    writes += 1;
                }
                AlarmAction::Delete => {
                    state.remove(&c.name);
                    writes += 1;
                }
                AlarmAction::Unchanged | AlarmAction::Keep => {}
            }
        }
        (state, writes)
    }

    proptest! {
        #[test]
        fn applying_the_plan_converges_and_a_second_plan_writes_nothing(
            desired in prop::collection::vec(arb_alarm(), 0..8),
            existing in prop::collection::vec(arb_alarm(), 0..8),
            prune in any::<bool>(),
        ) {
            let desired = by_name(desired);
            let existing = by_name(existing);
            let d: Vec<_> = desired.values().cloned().collect();
            let e: Vec<_> = existing.values().cloned().collect();
            let plan = diff(&d, &e, prune, |_| true);
            let (after, _) = simulate(&existing, &plan);
            for (name, a) in &desired {
                prop_assert_eq!(after.get(name), Some(a));
            }
            for name in existing.keys().filter(|n| !desired.contains_key(*n)) {
                prop_assert_eq!(after.contains_key(name), !prune);
            }
            let a: Vec<_> = after.values().cloned().collect();
            let second = diff(&d, &a, prune, |_| true);
            let (_, writes) = simulate(&after, &second);
            prop_assert_eq!(writes, 0);
        }

        #[test]
        fn one_changed_field_makes_exactly_one_update_naming_that_field(
            base in prop::collection::vec(arb_alarm(), 1..6),
            pick in any::<prop::sample::Index>(),
            new_threshold in 2000.0f64..3000.0,
        ) {
            let existing: Vec<_> = by_name(base).into_values().collect();
            let mut desired = existing.clone();
            let i = pick.index(desired.len());
            desired[i].threshold = new_threshold;
            let plan = diff(&desired, &existing, true, |_| true);
            let updates: Vec<_> = plan
                .iter()
                .filter(|c| matches!(c.action, AlarmAction::Update { .. }))
                .collect();
            prop_assert_eq!(updates.len(), 1);
            prop_assert_eq!(&updates[0].name, &desired[i].name);
            prop_assert_eq!(
                &updates[0].action,
                &AlarmAction::Update { fields: vec!["threshold"] }
            );
            prop_assert_eq!(plan.len(), existing.len());
        }
    }

    #[test]
    fn an_undeclared_alarm_is_deleted_only_with_prune() {
        let old = alarm("tally-old".into(), 1.0, 60, vec![]);
        let kept = diff(&[], std::slice::from_ref(&old), false, |_| true);
        assert_eq!(kept[0].action, AlarmAction::Keep);
        let deleted = diff(&[], &[old], true, |_| true);
        assert_eq!(deleted[0].action, AlarmAction::Delete);
        assert_eq!(deleted[0].monthly_cost_usd, 0.0);
    }

    #[test]
    fn the_plan_text_lists_actions_fields_and_cost() {
        let a = alarm("tally-a".into(), 1.0, 60, vec![]);
        let mut b = alarm("tally-b".into(), 1.0, 60, vec![]);
        let existing = vec![b.clone(), alarm("tally-c".into(), 1.0, 60, vec![])];
        b.evaluation_periods = 3;
        let changes = diff(&[a, b], &existing, false, |_| true);
        let plan = Plan {
            prefix: "tally-".into(),
            prune: false,
            current_monthly_usd: 0.2,
            planned_monthly_usd: 0.3,
            alarms: changes,
            dashboard: None,
        };
        let text = plan.to_string();
        assert!(text.contains("create     tally-a  $0.10/month"), "{text}");
        assert!(text.contains("update     tally-b"), "{text}");
        assert!(text.contains("(evaluation_periods)"), "{text}");
        assert!(text.contains("keep       tally-c"), "{text}");
        assert!(text.contains("1 to create, 1 to update, 0 to delete, 0 unchanged, 1 kept"));
        assert!(
            text.contains("$0.20/month now, $0.30/month after apply"),
            "{text}"
        );
        assert!(!plan.is_noop());
    }
}
