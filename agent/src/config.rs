//! The agent's configuration: one TOML file, every key overridable by environment variable and
//! by command-line flag.
//!
//! # Layers
//!
//! 1. Built-in defaults (documented on each field and in `docs/configuration.md`).
//! 2. The TOML file given with `--config FILE` (or `TALLY_CONFIG`).
//! 3. Environment variables `TALLY_<KEY>`, where `__` separates table levels:
//!    `TALLY_AGGREGATE__MAX_SERIES=5000` sets `aggregate.max_series`.
//! 4. Flags `--set KEY=VALUE`, where `.` separates table levels: `--set aggregate.max_series=5000`.
//!
//! Overrides are applied to the TOML tree before it is deserialized, so every section (including
//! sections other modules own) gets them with no code of its own. A value is parsed as a TOML
//! value (`5000`, `true`, `["Route"]`, `"60"`) and falls back to a plain string (`Tally/Shop`).
//! Only environment variables whose first segment names a top-level key in [`TOP_LEVEL_KEYS`]
//! are applied, so unrelated `TALLY_*` variables (the SDK's `TALLY_AGENT_ADDR`) are ignored.
//!
//! Unknown keys are errors (a typo never silently keeps a default), and [`Config::validate`]
//! checks values, naming the key to fix in every message.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::alarms::config::{AlarmDefaults, AlarmManagement};
use crate::alarms::{AlarmSpec, AlarmsConfig, DashboardConfig};
use crate::catalog::{Catalog, CatalogInputs};
use crate::cloudwatch::rules;
pub use crate::durability::DurabilityConfig;
use crate::ecs::EcsConfig;
use crate::publish::PublishConfig;
pub use crate::self_metrics::SelfMetricsConfig;

// Each section's type and its check live with the module it configures; they are named here
// too, where the whole file is put together.
pub use crate::admin::AdminConfig;
pub use crate::aggregate::{
    AggregateConfig, DeclaredMetric, DerivedConfig, RollupConfig, TimeUnit,
};
pub use crate::ingest::IngestConfig;
pub use crate::sinks::{SinkConfig, SinkKind};
pub use crate::statsd::StatsdConfig;

/// Top-level keys that environment variables may override (`TALLY_<KEY>...`).
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "namespace",
    "service",
    "environment",
    "period_secs",
    "time_unit",
    "ingest",
    "admin",
    "aggregate",
    "sink",
    "log",
    "publish",
    "alarms",
    "alarm_defaults",
    "alarm_management",
    "dashboard",
    "ecs",
    "durability",
    "self_metrics",
    "canary",
    "statsd",
];

/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "TALLY_";

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// CloudWatch namespace of every published metric. Default `Tally`.
    pub namespace: String,
    /// `ServiceName` dimension. Empty (default): taken from each SDK process's identity,
    /// `unknown` when that is empty too.
    pub service: String,
    /// `Environment` dimension. Empty (default): from each SDK process, else `unknown`.
    pub environment: String,
    /// Aggregation period in seconds: 60 (default), or 1, 10, 30 for high resolution
    /// (StorageResolution 1).
    pub period_secs: u32,
    /// Unit durations are published in: `Milliseconds` (default), `Microseconds` or `Seconds`.
    pub time_unit: TimeUnit,
    /// Where SDKs connect.
    pub ingest: IngestConfig,
    /// The admin HTTP endpoint.
    pub admin: AdminConfig,
    /// Aggregation bounds, rollups, derived and declared metrics.
    pub aggregate: AggregateConfig,
    /// Where closed periods go.
    pub sink: SinkConfig,
    /// Logging.
    pub log: LogConfig,
    /// `[publish]`: the CloudWatch publisher (region, endpoint, retries, bounds).
    pub publish: PublishConfig,
    /// `[ecs]`: task-metadata dimensions added to every published metric.
    pub ecs: EcsConfig,
    /// `[[alarms]]`: alarms provisioned by `tally-agent alarms apply`.
    pub alarms: Vec<AlarmSpec>,
    /// `[alarm_defaults]`: values every alarm inherits.
    pub alarm_defaults: AlarmDefaults,
    /// `[alarm_management]`: name prefix, pruning, pacing, apply at start.
    pub alarm_management: AlarmManagement,
    /// `[dashboard]`: the per-service CloudWatch dashboard.
    pub dashboard: DashboardConfig,
    /// `[durability]`: the write-ahead log that keeps acknowledged batches across a crash.
    pub durability: DurabilityConfig,
    /// `[self_metrics]`: the agent's own metrics in CloudWatch (off by default: they are
    /// billed as custom metrics).
    pub self_metrics: SelfMetricsConfig,
    /// `[canary]`: per-revision series and the canary gate's limits (`tally-agent canary`).
    pub canary: crate::canary::CanaryConfig,
    /// `[statsd]`: the StatsD / DogStatsD receiver (off by default).
    pub statsd: StatsdConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "Tally".into(),
            service: String::new(),
            environment: String::new(),
            period_secs: 60,
            time_unit: TimeUnit::Milliseconds,
            ingest: IngestConfig::default(),
            admin: AdminConfig::default(),
            aggregate: AggregateConfig::default(),
            sink: SinkConfig::default(),
            log: LogConfig::default(),
            publish: PublishConfig::default(),
            ecs: EcsConfig::default(),
            alarms: Vec::new(),
            alarm_defaults: AlarmDefaults::default(),
            alarm_management: AlarmManagement::default(),
            dashboard: DashboardConfig::default(),
            durability: DurabilityConfig::default(),
            self_metrics: SelfMetricsConfig::default(),
            canary: crate::canary::CanaryConfig::default(),
            statsd: StatsdConfig::default(),
        }
    }
}

/// `[log]`: logging through `tracing`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter in `RUST_LOG` syntax. Default `info`.
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl LogConfig {
    /// What is wrong with this section, one message per problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return vec![format!(
                "log.level = {:?} is not a valid filter (examples: info, debug, tally_agent=debug)",
                self.level
            )];
        }
        Vec::new()
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Why a configuration could not be loaded. Each message names what to fix.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source} (check --config / TALLY_CONFIG)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An override is malformed.
    #[error("override {origin} is malformed: {message}")]
    Override {
        /// `--set ...` or the environment variable.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A key is unknown or has the wrong type.
    #[error("invalid configuration (after overrides; see docs/configuration.md):\n{0}")]
    Shape(String),
    /// Values break the rules; one line per problem.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// Where an override came from, for error messages.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted key path (`aggregate.max_series`).
    pub path: Vec<String>,
    /// Raw value text.
    pub value: String,
    /// `--set aggregate.max_series=...` or `TALLY_AGGREGATE__MAX_SERIES`.
    pub origin: String,
}

/// Parses `--set KEY=VALUE` flags.
pub fn flag_overrides(sets: &[String]) -> Result<Vec<Override>, ConfigError> {
    sets.iter()
        .map(|s| {
            let (k, v) = s.split_once('=').ok_or_else(|| ConfigError::Override {
                origin: format!("--set {s}"),
                message: "expected KEY=VALUE, for example --set aggregate.max_series=5000".into(),
            })?;
            let path: Vec<String> = k.trim().split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::Override {
                    origin: format!("--set {s}"),
                    message: "empty key segment; keys look like aggregate.max_series".into(),
                });
            }
            Ok(Override {
                path,
                value: v.to_owned(),
                origin: format!("--set {k}"),
            })
        })
        .collect()
}

/// The double underscore an environment variable meant to use: `TALLY_DURABILITY_DIR` (one
/// underscore, so it names no top-level key and would be ignored) is `TALLY_DURABILITY__DIR`.
fn env_typo(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let first = rest.split("__").next()?.to_ascii_lowercase();
    if TOP_LEVEL_KEYS.contains(&first.as_str()) {
        return None;
    }
    // Sections only: `TALLY_SERVICE_NAME` is not a misspelt `service` (a plain value).
    const SCALARS: &[&str] = &[
        "namespace",
        "service",
        "environment",
        "period_secs",
        "time_unit",
    ];
    let section = TOP_LEVEL_KEYS
        .iter()
        .filter(|s| !SCALARS.contains(s))
        .find(|s| {
            first.len() > s.len() + 1 && first.starts_with(*s) && first.as_bytes()[s.len()] == b'_'
        })?;
    let fixed = format!(
        "{ENV_PREFIX}{}__{}",
        section.to_ascii_uppercase(),
        &rest[section.len() + 1..]
    );
    Some(fixed)
}

/// Overrides from `TALLY_*` environment variables (only those naming a known top-level key;
/// others, such as the SDK's `TALLY_AGENT_ADDR`, are not the agent's). A variable that names
/// one of its keys with `_` where `__` belongs (`TALLY_DURABILITY_DIR`) is an error: ignored,
/// it would keep the default silently.
pub fn env_overrides(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in vars {
        let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if !TOP_LEVEL_KEYS.contains(&path[0].as_str()) || path.iter().any(String::is_empty) {
            if let Some(fixed) = env_typo(&k) {
                return Err(ConfigError::Override {
                    origin: k,
                    message: format!(
                        "it names no configuration key: a section and its key are separated \
                         by two underscores ({fixed})"
                    ),
                });
            }
            continue;
        }
        out.push(Override {
            path,
            value: v,
            origin: k,
        });
    }
    out.sort_by(|a, b| a.origin.cmp(&b.origin));
    Ok(out)
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// Applies overrides to a TOML tree, creating tables as needed.
pub fn apply_overrides(tree: &mut toml::Table, overrides: &[Override]) -> Result<(), ConfigError> {
    // Keys that hold names an operator chooses: `TALLY_ENVIRONMENT=2024` or
    // `--set service=true` mean the text, not a TOML number or boolean these keys refuse.
    const TEXT_KEYS: &[&[&str]] = &[
        &["namespace"],
        &["service"],
        &["environment"],
        &["dashboard", "name"],
        &["alarm_management", "name_prefix"],
        &["publish", "region"],
        &["durability", "dir"],
        &["canary", "revision"],
    ];
    let is_text = |path: &[String]| TEXT_KEYS.iter().any(|k| k.iter().eq(path.iter()));
    for o in overrides {
        let mut t = &mut *tree;
        let (last, parents) = o.path.split_last().expect("non-empty path");
        for p in parents {
            let entry = t
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            t = entry.as_table_mut().ok_or_else(|| ConfigError::Override {
                origin: o.origin.clone(),
                message: format!("`{p}` is not a table, so it has no key `{last}`"),
            })?;
        }
        let value = match parse_value(&o.value) {
            // A number, boolean or date where text belongs: the text as written.
            v if is_text(&o.path) && !(v.is_str() || v.is_table() || v.is_array()) => {
                toml::Value::String(o.value.clone())
            }
            v => v,
        };
        t.insert(last.clone(), value);
    }
    Ok(())
}

impl Config {
    /// Parses a TOML document (no overrides, no validation).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
        text.parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                message: e.to_string(),
            })
    }

    /// Builds a config from a TOML tree with overrides applied, then validates it.
    pub fn from_tree(mut tree: toml::Table, overrides: &[Override]) -> Result<Config, ConfigError> {
        apply_overrides(&mut tree, overrides)?;
        // Deserialize from text so a type error points at the offending key and line.
        let text = toml::to_string(&tree).map_err(|e| ConfigError::Shape(e.to_string()))?;
        let cfg: Config = toml::from_str(&text).map_err(|e: toml::de::Error| {
            ConfigError::Shape(e.to_string().trim_end().to_owned())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads the file (if any), applies environment and flag overrides, validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[String],
    ) -> Result<Config, ConfigError> {
        let tree = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                Self::from_toml_str(&text, p)?
            }
            None => toml::Table::new(),
        };
        let mut overrides = env_overrides(env)?;
        overrides.extend(flag_overrides(flags)?);
        Self::from_tree(tree, &overrides)
    }

    /// Settings that are valid but will probably not do what the operator wants, each with
    /// what to change: `tally-agent validate` prints them, `tally-agent run` logs them.
    pub fn warnings(&self) -> Vec<String> {
        // A typical series when sizing the pending queue: ServiceName, Environment, three
        // labels and three ECS dimensions, values of 16 bytes. Rollups are left out: each can
        // add one metric per series it matches, but drops dimensions to collapse series
        // (usually by orders of magnitude), so their worst case would warn about nearly
        // every config that has one; docs/configuration.md says how to size for them.
        const DIMENSIONS: usize = 8;
        const VALUE_LEN: usize = 16;
        let mut out = Vec::new();
        let metrics = self
            .aggregate
            .max_series
            .saturating_mul(1 + self.aggregate.derived.len());
        let per_metric = crate::publish::datum::counter_metric_bytes(DIMENSIONS, VALUE_LEN);
        let need = metrics.saturating_mul(per_metric);
        if self.sink.kind != SinkKind::Stdout && need > self.publish.max_pending_bytes {
            const MIB: usize = 1024 * 1024;
            out.push(format!(
                "publish.max_pending_bytes = {} MiB holds about {} metrics of {DIMENSIONS} dimensions, \
                 but a period at aggregate.max_series = {} with {} derived metric(s) can reach {metrics}: \
                 the oldest metrics of such a period would be dropped (reason=\"queue_full\") even while \
                 CloudWatch answers. Raise publish.max_pending_bytes to at least {} MiB (and the \
                 container's memory with it), or lower aggregate.max_series",
                self.publish.max_pending_bytes / MIB,
                self.publish.max_pending_bytes / per_metric,
                self.aggregate.max_series,
                self.aggregate.derived.len(),
                need.div_ceil(MIB),
            ));
        }
        // A missing numerator counts as 0 (a route without errors has no ErrorCount series),
        // so a rollup of the denominator alone gives a derived metric that always reads 0.
        for (n, r) in self.aggregate.rollups.iter().enumerate() {
            if r.metrics.is_empty() {
                continue;
            }
            for d in &self.aggregate.derived {
                if r.metrics.contains(&d.denominator) && !r.metrics.contains(&d.numerator) {
                    out.push(format!(
                        "aggregate.rollups[{n}] rolls up {} but not {}: the derived {} on its \
                         dimension sets would read 0 whatever happens; add {:?} to its metrics",
                        d.denominator, d.numerator, d.name, d.numerator
                    ));
                }
            }
        }
        let i = &self.ingest;
        // The tally SDK closes a batch at about 4 MiB (its estimate; a frame is a little
        // larger): a frame the agent refuses for its size is sent again, first, on every
        // reconnect, and holds everything behind it until the SDK's bound drops it.
        const SDK_FRAMES: usize = 8 << 20;
        if i.max_frame_bytes < SDK_FRAMES {
            out.push(format!(
                "ingest.max_frame_bytes = {} is below 8 MiB: the tally SDK sends batches of up \
                 to about 4 MiB, and one the agent refuses for its size blocks that SDK's later \
                 batches until its max_unsent_bytes bound drops them; keep 8 MiB or more \
                 (default 16 MiB)",
                i.max_frame_bytes
            ));
        }
        let first_chunks = i
            .max_connections
            .saturating_mul(crate::ingest::session::FIRST_CHUNK);
        if i.max_buffered_bytes < i.max_frame_bytes.saturating_add(first_chunks) {
            out.push(format!(
                "ingest.max_buffered_bytes = {} is below ingest.max_frame_bytes ({}) plus 16 KiB for \
                 each of ingest.max_connections ({}): when many connections start frames at once, \
                 a large frame can wait for the budget until ingest.frame_timeout_secs and be sent \
                 again. Raise max_buffered_bytes to {} or lower max_connections",
                i.max_buffered_bytes,
                i.max_frame_bytes,
                i.max_connections,
                i.max_frame_bytes.saturating_add(first_chunks),
            ));
        }
        out
    }

    /// Checks every value; the error lists each problem with the key to fix. Each section
    /// checks itself (`problems()` in the module it configures); what involves more than one
    /// section or a top-level key is checked here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        if let Err(e) = rules::check_namespace(&self.namespace) {
            errs.push(format!("namespace: {e}"));
        }
        for (key, v) in [
            ("service", &self.service),
            ("environment", &self.environment),
        ] {
            if !v.is_empty() {
                if let Err(e) = rules::check_dimension_value(v) {
                    errs.push(format!("{key}: {e}"));
                }
            }
        }
        if ![1, 10, 30, 60].contains(&self.period_secs) {
            errs.push(format!(
                "period_secs = {} is not supported: use 60 (standard) or 1, 10, 30 (high resolution)",
                self.period_secs
            ));
        }
        errs.extend(self.ingest.problems());
        errs.extend(self.admin.problems());
        errs.extend(self.aggregate.problems());
        if let Some(g) = self.aggregate.grace_ms {
            if g >= u64::from(self.period_secs) * 1000 {
                errs.push(format!(
                    "aggregate.grace_ms = {g} must be shorter than the period (period_secs = {})",
                    self.period_secs
                ));
            }
        }
        errs.extend(self.sink.problems());
        errs.extend(self.log.problems());
        errs.extend(self.publish.problems());
        errs.extend(self.alarm_management.problems());
        errs.extend(self.durability.problems());
        errs.extend(self.canary.problems());
        errs.extend(self.statsd.problems());
        if self.self_metrics.cloudwatch {
            let declared = self.aggregate.metrics.iter().map(|m| ("metrics", &m.name));
            let derived = self.aggregate.derived.iter().map(|d| ("derived", &d.name));
            for (section, name) in declared.chain(derived) {
                if crate::self_metrics::is_self_metric_name(name) {
                    errs.push(format!(
                        "aggregate.{section} names {name:?}, one of the agent's own metrics \
                         (self_metrics.cloudwatch = true): rename the metric"
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }

    /// The alarm sections (`[[alarms]]`, `[alarm_defaults]`, `[alarm_management]`) together.
    pub fn alarms_config(&self) -> AlarmsConfig {
        AlarmsConfig {
            alarms: self.alarms.clone(),
            alarm_defaults: self.alarm_defaults.clone(),
            alarm_management: self.alarm_management.clone(),
        }
    }

    /// The aggregation period.
    pub fn period(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.period_secs))
    }

    /// How long a period stays open after its end (`aggregate.grace_ms` or its default).
    pub fn grace(&self) -> std::time::Duration {
        let ms = self
            .aggregate
            .grace_ms
            .unwrap_or_else(|| 2_000.min(u64::from(self.period_secs) * 500));
        std::time::Duration::from_millis(ms)
    }
}

// What each module needs from the whole file, built here so that no module imports the
// configuration it is a section of.
impl crate::aggregate::Settings {
    /// The settings a configuration implies.
    pub fn from_config(c: &Config) -> Self {
        crate::aggregate::Settings {
            namespace: c.namespace.clone(),
            service: c.service.clone(),
            environment: c.environment.clone(),
            period_secs: c.period_secs,
            time_unit: c.time_unit,
            max_series: c.aggregate.max_series,
            grace: c.grace(),
            rollups: c.aggregate.rollups.clone(),
            derived: c.aggregate.derived.clone(),
            extra_dimensions: Vec::new(),
            revision: c.canary.rollup(),
        }
    }
}

impl Catalog {
    /// Everything a configuration publishes: tally-tower's standard metrics (unless
    /// `aggregate.standard_metrics = false`), the declared `[[aggregate.metrics]]`, each with
    /// its rollups, the derived metrics on every dimension set of their denominator, and the
    /// agent's own metrics with `Component=agent` when `[self_metrics] cloudwatch = true`.
    pub fn from_config(config: &Config) -> Catalog {
        Self::from_config_with(config, &[])
    }

    /// Like [`Catalog::from_config`], with the fixed dimensions the agent adds to every metric
    /// besides ServiceName and Environment (the `[ecs]` task-metadata dimensions it resolved).
    pub fn from_config_with(config: &Config, extra: &[(String, String)]) -> Catalog {
        Catalog::build(&CatalogInputs {
            namespace: &config.namespace,
            service: &config.service,
            environment: &config.environment,
            time_unit: config.time_unit,
            aggregate: &config.aggregate,
            self_metrics: &config.self_metrics,
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::stdout::StdoutFormat;

    fn load(toml: &str, env: &[(&str, &str)], flags: &[&str]) -> Result<Config, ConfigError> {
        let tree = Config::from_toml_str(toml, Path::new("test.toml"))?;
        let mut o = env_overrides(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
        o.extend(flag_overrides(
            &flags.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?);
        Config::from_tree(tree, &o)
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let c = load("", &[], &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.ingest.tcp_addr, "127.0.0.1:9911");
        assert_eq!(c.period_secs, 60);
        assert_eq!(c.aggregate.derived, vec![DerivedConfig::error_rate()]);
    }

    #[test]
    fn flags_beat_environment_variables_which_beat_the_file() {
        let c = load(
            "namespace = \"File\"\n[aggregate]\nmax_series = 10\n",
            &[
                ("TALLY_AGGREGATE__MAX_SERIES", "20"),
                ("TALLY_NAMESPACE", "Env/Ns"),
            ],
            &["aggregate.max_series=30"],
        )
        .unwrap();
        assert_eq!(c.aggregate.max_series, 30);
        assert_eq!(c.namespace, "Env/Ns");
    }

    #[test]
    fn overrides_parse_arrays_booleans_and_quoted_strings() {
        let c = load(
            "",
            &[],
            &[
                "ingest.allow_non_loopback=true",
                "environment=\"2024\"",
                "sink.stdout_format=json",
            ],
        )
        .unwrap();
        assert!(c.ingest.allow_non_loopback);
        assert_eq!(c.environment, "2024");
        assert_eq!(c.sink.stdout_format, StdoutFormat::Json);
    }

    #[test]
    fn unrelated_tally_environment_variables_are_ignored() {
        let c = load("", &[("TALLY_AGENT_ADDR", "127.0.0.1:1")], &[]).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let e = load("", &[("TALLY_AGGREGATE__MAX_SERIEZ", "5")], &[]).unwrap_err();
        assert!(e.to_string().contains("max_seriez"), "{e}");
    }

    #[test]
    fn a_non_loopback_ingest_address_is_refused_unless_allowed() {
        let e = load("[ingest]\ntcp_addr = \"0.0.0.0:9911\"\n", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("ingest.allow_non_loopback"), "{e}");
        load(
            "[ingest]\ntcp_addr = \"0.0.0.0:9911\"\nallow_non_loopback = true\n",
            &[],
            &[],
        )
        .unwrap();
    }

    #[test]
    fn every_invalid_value_is_reported_with_its_key() {
        let e = load(
            "namespace = \"AWS/EC2\"\nperiod_secs = 15\n[aggregate]\nmax_series = 0\n[[aggregate.rollups]]\ndrop = []\n",
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        for key in [
            "namespace",
            "period_secs",
            "aggregate.max_series",
            "aggregate.rollups[0].drop",
        ] {
            assert!(e.contains(key), "{key} missing in: {e}");
        }
    }

    #[test]
    fn self_metrics_are_off_by_default_and_switched_on_like_every_other_key() {
        assert!(!load("", &[], &[]).unwrap().self_metrics.cloudwatch);
        let c = load("", &[("TALLY_SELF_METRICS__CLOUDWATCH", "true")], &[]).unwrap();
        assert!(c.self_metrics.cloudwatch);
        let c = load(
            "[self_metrics]\ncloudwatch = true\n",
            &[],
            &["self_metrics.cloudwatch=false"],
        )
        .unwrap();
        assert!(!c.self_metrics.cloudwatch);
        let e = load("[self_metrics]\ncloudwach = true\n", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("cloudwach"), "{e}");
    }

    #[test]
    fn a_text_key_set_to_something_that_reads_as_a_number_keeps_the_text() {
        let c = load(
            "",
            &[("TALLY_ENVIRONMENT", "2024"), ("TALLY_SERVICE", "true")],
            &["namespace=1_000"],
        )
        .unwrap();
        assert_eq!(
            (
                c.environment.as_str(),
                c.service.as_str(),
                c.namespace.as_str()
            ),
            ("2024", "true", "1_000")
        );
        // Numbers stay numbers where a number is expected.
        assert_eq!(
            load("", &[("TALLY_PERIOD_SECS", "10")], &[])
                .unwrap()
                .period_secs,
            10
        );
    }

    #[test]
    fn an_environment_variable_with_one_underscore_for_two_is_refused_with_its_spelling() {
        for (var, fixed) in [
            ("TALLY_DURABILITY_DIR", "TALLY_DURABILITY__DIR"),
            (
                "TALLY_SELF_METRICS_CLOUDWATCH",
                "TALLY_SELF_METRICS__CLOUDWATCH",
            ),
            (
                "TALLY_SINK_SHUTDOWN_DEADLINE_SECS",
                "TALLY_SINK__SHUTDOWN_DEADLINE_SECS",
            ),
        ] {
            let e = load("", &[(var, "x")], &[]).unwrap_err().to_string();
            assert!(e.contains(var) && e.contains(fixed), "{e}");
        }
        // Not the agent's: the SDK's address, the config path, a top-level key.
        let c = load(
            "",
            &[
                ("TALLY_AGENT_ADDR", "127.0.0.1:1"),
                ("TALLY_CONFIG", "/x.toml"),
                ("TALLY_PERIOD_SECS", "10"),
                ("TALLY_SERVICE_NAME", "web"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.period_secs, 10);
    }

    #[test]
    fn a_derived_metric_in_a_unit_tally_cannot_publish_is_refused_with_the_units_it_can() {
        let derived = |unit: &str| {
            format!(
                "[[aggregate.derived]]\nname = \"Rps\"\nnumerator = \"RequestCount\"\n\
                 denominator = \"Instances\"\nunit = \"{unit}\"\n"
            )
        };
        load(&derived("Count"), &[], &[]).unwrap();
        let e = load(&derived("Count/Second"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("aggregate.derived[")
                && e.contains("].unit")
                && e.contains("Count/Second")
                && e.contains("Percent"),
            "{e}"
        );
    }

    #[test]
    fn a_rollup_of_a_derived_metrics_denominator_without_its_numerator_is_warned_about() {
        let toml = |metrics: &str| {
            format!("[[aggregate.rollups]]\ndrop = [\"Route\"]\nmetrics = {metrics}\n")
        };
        let c = load(&toml("[\"RequestCount\"]"), &[], &[]).unwrap();
        let w = c.warnings().join("\n");
        assert!(
            w.contains("aggregate.rollups[0] rolls up RequestCount but not ErrorCount"),
            "{w}"
        );
        for ok in ["[\"RequestCount\", \"ErrorCount\"]", "[]"] {
            assert!(load(&toml(ok), &[], &[]).unwrap().warnings().is_empty());
        }
    }

    #[test]
    fn a_read_budget_too_small_for_every_connections_first_chunk_is_warned_about() {
        assert!(Config::default().warnings().is_empty());
        let c = load(
            "[ingest]\nmax_frame_bytes = 4194304\nmax_buffered_bytes = 8388608\n",
            &[],
            &[],
        )
        .unwrap();
        let w = c.warnings().join("\n");
        assert!(
            w.contains("ingest.max_buffered_bytes") && w.contains("max_connections"),
            "{w}"
        );
        assert!(
            w.contains("ingest.max_frame_bytes = 4194304 is below 8 MiB"),
            "{w}"
        );
        let c = load(
            "[ingest]\nmax_frame_bytes = 8388608\nmax_buffered_bytes = 12582912\nmax_connections = 256\n",
            &[],
            &[],
        )
        .unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn a_declared_metric_may_not_take_a_self_metric_name_while_they_are_published() {
        let toml = "[[aggregate.metrics]]\nname = \"AgentDroppedSamples\"\n";
        load(toml, &[], &[]).unwrap();
        let e = load(toml, &[], &["self_metrics.cloudwatch=true"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("aggregate.metrics") && e.contains("AgentDroppedSamples"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_flag_says_what_form_is_expected() {
        let e = load("", &[], &["aggregate.max_series"]).unwrap_err();
        assert!(e.to_string().contains("KEY=VALUE"), "{e}");
    }

    #[test]
    fn a_syntax_error_names_the_file() {
        let e = load("namespace = ", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("test.toml"), "{e}");
    }

    #[test]
    fn a_series_limit_past_what_a_period_can_number_is_refused() {
        let at = |n: u64| {
            let mut c = Config::default();
            c.aggregate.max_series = n as usize;
            c.validate()
        };
        let e = at(u64::from(u32::MAX)).unwrap_err().to_string();
        assert!(
            e.contains("aggregate.max_series = 4294967295 is too large: use at most 4294967294"),
            "{e}"
        );
        assert!(at(u64::from(u32::MAX) - 1).is_ok());
    }

    #[test]
    fn the_default_pending_bound_holds_a_period_at_the_default_series_limit() {
        let c = load("", &[], &[]).unwrap();
        assert_eq!(c.warnings(), Vec::<String>::new());
        let w = load("", &[], &["aggregate.max_series=300000"])
            .unwrap()
            .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("publish.max_pending_bytes to at least")
                && w[0].contains("aggregate.max_series = 300000"),
            "{w:?}"
        );
        // Printing periods locally queues nothing.
        let stdout = load(
            "",
            &[],
            &["aggregate.max_series=300000", "sink.kind=stdout"],
        )
        .unwrap();
        assert_eq!(stdout.warnings(), Vec::<String>::new());
    }
}
