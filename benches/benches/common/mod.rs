//! Pieces the bench targets share (included with `mod common;`; a folder without `main.rs`
//! is not a bench target of its own).

use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;

/// An OpenTelemetry exporter that discards what it is given: the SDK aggregates exactly as
/// with a real exporter, and a long export interval keeps exports out of the measurement.
pub struct DiscardExporter;

impl PushMetricExporter for DiscardExporter {
    async fn export(&self, _: &ResourceMetrics) -> OTelSdkResult {
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
    fn temporality(&self) -> Temporality {
        Temporality::Delta
    }
}
