//! The local default sink: each closed period printed as a compact table or as JSON lines.
//!
//! Used when no AWS endpoint or credentials are configured, or with `--sink stdout`, so the
//! agent runs on a fresh machine with nothing else. JSON lines are one object per metric and
//! period (`{"namespace":..,"timestamp":..,"metric":..,"dimensions":{..},"count":..}`), which the
//! end-to-end tests parse to check totals.

use std::io::Write;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Sink, SinkError, SinkFuture};
use crate::cloudwatch::cloudwatch_unit;
use crate::model::{AggregateValue, MetricKey, PeriodData};

/// How the stdout sink prints a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdoutFormat {
    /// A human-readable table per period: metric, dimensions, count, p50, p99, max.
    #[default]
    Table,
    /// One JSON object per metric and period.
    Json,
}

/// Prints periods to a writer (standard output by default).
pub struct StdoutSink {
    format: StdoutFormat,
    out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for StdoutSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdoutSink")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl StdoutSink {
    /// A sink printing to standard output.
    pub fn new(format: StdoutFormat) -> Self {
        Self::with_writer(format, Box::new(std::io::stdout()))
    }

    /// A sink printing to any writer (tests use a buffer).
    pub fn with_writer(format: StdoutFormat, out: Box<dyn Write + Send>) -> Self {
        StdoutSink { format, out }
    }

    /// Writes a period line by line through a buffer: a period of 100k metrics is never
    /// rendered as a whole in memory.
    fn write_period(&mut self, p: &PeriodData) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, &mut self.out);
        match self.format {
            StdoutFormat::Json => write_json(p, &mut out)?,
            StdoutFormat::Table => write_table(p, &mut out)?,
        }
        out.flush()
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn send(&mut self, period: PeriodData) -> SinkFuture<'_> {
        let r = self.write_period(&period).map_err(|source| SinkError::Io {
            sink: "stdout",
            source,
        });
        Box::pin(async move { r })
    }

    fn shutdown(&mut self, _deadline: tokio::time::Instant) -> SinkFuture<'_> {
        let r = self.out.flush().map_err(|source| SinkError::Io {
            sink: "stdout",
            source,
        });
        Box::pin(async move { r })
    }
}

fn unix_secs(p: &PeriodData) -> u64 {
    p.timestamp
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Summary numbers of one aggregate: (count, sum, min, max, p50, p99), in the key's unit.
fn summary(v: &AggregateValue) -> (u64, f64, f64, f64, f64, f64) {
    match v {
        AggregateValue::Counter(s) => (v.samples(), *s, *s, *s, *s, *s),
        AggregateValue::Derived(x) => (1, *x, *x, *x, *x, *x),
        AggregateValue::Gauge {
            last,
            min,
            max,
            updates,
        } => (*updates, *last, *min, *max, *last, *last),
        AggregateValue::Distribution { scale, histogram } => {
            let h = histogram;
            if h.is_empty() {
                return (0, 0.0, 0.0, 0.0, 0.0, 0.0);
            }
            let sum: f64 = h
                .buckets()
                .iter()
                .map(|&(value, count)| h.median_equivalent(value) as f64 * count as f64)
                .sum();
            (
                h.len(),
                sum / scale,
                h.min() as f64 / scale,
                h.max() as f64 / scale,
                h.value_at_quantile(0.5) as f64 / scale,
                h.value_at_quantile(0.99) as f64 / scale,
            )
        }
    }
}

fn kind(v: &AggregateValue) -> &'static str {
    match v {
        AggregateValue::Counter(_) => "counter",
        AggregateValue::Gauge { .. } => "gauge",
        AggregateValue::Distribution { .. } => "distribution",
        AggregateValue::Derived(_) => "derived",
    }
}

/// One JSON object per metric, newline-terminated.
pub fn write_json(p: &PeriodData, out: &mut impl Write) -> std::io::Result<()> {
    let ts = unix_secs(p);
    for (key, value) in &p.metrics {
        let dims: Map<String, Value> = key
            .dimensions
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(&**v)))
            .collect();
        let (count, sum, min, max, p50, p99) = summary(value);
        let mut obj = json!({
            "namespace": p.namespace,
            "timestamp": ts,
            "period": p.period_secs,
            "metric": &*key.name,
            "unit": cloudwatch_unit(key.unit),
            "kind": kind(value),
            "dimensions": dims,
            "count": count,
            "sum": sum,
        });
        if matches!(
            value,
            AggregateValue::Distribution { .. } | AggregateValue::Gauge { .. }
        ) {
            obj["min"] = json!(min);
            obj["max"] = json!(max);
            obj["p50"] = json!(p50);
            obj["p99"] = json!(p99);
        }
        serde_json::to_writer(&mut *out, &obj)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The table's cells for one metric: name (unit), dimensions, count, p50, p99, max.
fn cells(key: &MetricKey, value: &AggregateValue) -> [String; 6] {
    let mut dims = String::new();
    for (i, (k, v)) in key.dimensions.iter().enumerate() {
        if i > 0 {
            dims.push(',');
        }
        dims.push_str(k);
        dims.push('=');
        dims.push_str(v);
    }
    let (count, sum, _min, max, p50, p99) = summary(value);
    let unit = cloudwatch_unit(key.unit);
    let (c, a, b, m) = match value {
        AggregateValue::Counter(_) => (format!("{sum}"), "-".into(), "-".into(), "-".into()),
        // A derived value (ErrorRate) is a ratio: three decimals, in the count column.
        AggregateValue::Derived(_) => (format!("{sum:.3}"), "-".into(), "-".into(), "-".into()),
        _ => (
            count.to_string(),
            format!("{p50:.3}"),
            format!("{p99:.3}"),
            format!("{max:.3}"),
        ),
    };
    [format!("{} ({unit})", key.name), dims, c, a, b, m]
}

/// A compact table: one header line per period, then one line per metric, columns aligned.
///
/// Two passes over the period (widths, then lines), so only one row is held at a time.
pub fn write_table(p: &PeriodData, out: &mut impl Write) -> std::io::Result<()> {
    let headers = ["metric", "dimensions", "count", "p50", "p99", "max"];
    let mut widths = headers.map(str::len);
    for (key, value) in &p.metrics {
        for (w, c) in widths.iter_mut().zip(cells(key, value)) {
            *w = (*w).max(c.len());
        }
    }
    writeln!(
        out,
        "-- {} period {}s at unix {} ({} metrics)",
        p.namespace,
        p.period_secs,
        unix_secs(p),
        p.metrics.len()
    )?;
    let mut line = |cells: [&str; 6]| {
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}  {:>w5$}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
            w5 = widths[5],
        )
    };
    line(headers)?;
    for (key, value) in &p.metrics {
        let r = cells(key, value);
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use hdrhistogram::Histogram;
    use tally::wire::Unit;

    use super::*;

    fn render(
        p: &PeriodData,
        write: fn(&PeriodData, &mut Vec<u8>) -> std::io::Result<()>,
    ) -> String {
        let mut out = Vec::new();
        write(p, &mut out).expect("writing to memory cannot fail");
        String::from_utf8(out).expect("the sink writes UTF-8")
    }

    fn period() -> PeriodData {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in [1_000_000u64, 2_000_000, 3_000_000] {
            h.record(v).unwrap();
        }
        let dims = MetricKey::new("", Unit::None, &[("ServiceName", "shop")]).dimensions;
        PeriodData {
            namespace: "Tally/Test".into(),
            timestamp: UNIX_EPOCH + Duration::from_secs(120),
            period_secs: 60,
            storage_resolution: 60,
            metrics: vec![
                (
                    MetricKey {
                        name: "RequestCount".into(),
                        unit: Unit::Count,
                        dimensions: dims.clone(),
                    },
                    AggregateValue::Counter(7.0),
                ),
                (
                    MetricKey {
                        name: "ResponseTime".into(),
                        unit: Unit::Milliseconds,
                        dimensions: dims,
                    },
                    AggregateValue::Distribution {
                        scale: 1e6,
                        histogram: Box::new((&h).into()),
                    },
                ),
            ],
        }
    }

    #[test]
    fn json_lines_carry_one_object_per_metric_with_counts_in_the_published_unit() {
        let text = render(&period(), write_json);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["metric"], "RequestCount");
        assert_eq!(lines[0]["sum"], 7.0);
        assert_eq!(lines[0]["dimensions"]["ServiceName"], "shop");
        assert_eq!(lines[1]["count"], 3);
        assert_eq!(lines[1]["unit"], "Milliseconds");
        let max = lines[1]["max"].as_f64().unwrap();
        assert!((max - 3.0).abs() < 0.01, "max {max}");
        assert_eq!(lines[1]["timestamp"], 120);
    }

    #[test]
    fn the_table_names_each_metric_with_its_dimensions_and_percentiles() {
        let text = render(&period(), write_table);
        assert!(text.contains("RequestCount (Count)"), "{text}");
        assert!(text.contains("ServiceName=shop"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("ResponseTime"))
            .unwrap();
        assert!(row.contains("2.000") || row.contains("2.001"), "{row}");
    }
}
