//! The request guard: created when a request enters the service, carried by the response
//! future and then by the response body, and recorded exactly once when it drops.
//!
//! Because recording happens in `Drop`, every path ends in exactly one sample: a body that
//! ends, a body the client abandons mid-stream, a service error, a future dropped before the
//! response (the client went away), or a panic in the inner service or body.

use std::sync::Arc;
use std::time::Instant;

use tally::conventions::{
    CLIENT_ERROR_COUNT, ERROR_COUNT, IN_FLIGHT, METHOD, REQUEST_COUNT, RESPONSE_TIME, ROUTE,
    STATUS_CLASS,
};
use tally::{CounterFamily, Gauge, HistogramFamily, Unit};

use crate::classify::{Classification, ClassifyResponse, StatusClass};
use crate::route::Route;

const LABELS: [&str; 3] = [ROUTE, METHOD, STATUS_CLASS];

/// The metric handles shared by every clone of the service.
#[derive(Clone)]
pub(crate) struct RequestMetrics {
    requests: CounterFamily,
    errors: CounterFamily,
    client_errors: CounterFamily,
    latency: HistogramFamily,
    in_flight: Gauge,
    pub(crate) client_errors_are_errors: bool,
}

impl RequestMetrics {
    pub(crate) fn new(tally: &tally::Tally) -> Self {
        RequestMetrics {
            requests: tally.counter_family(REQUEST_COUNT, &LABELS),
            errors: tally.counter_family(ERROR_COUNT, &LABELS),
            client_errors: tally.counter_family(CLIENT_ERROR_COUNT, &LABELS),
            latency: tally.histogram_family(RESPONSE_TIME, Unit::Nanoseconds, &LABELS),
            in_flight: tally.gauge(IN_FLIGHT, &[]),
            client_errors_are_errors: false,
        }
    }

    pub(crate) fn set_route_limit(&mut self, limit: usize) {
        self.requests = self.requests.clone().label_limit(ROUTE, limit);
        self.errors = self.errors.clone().label_limit(ROUTE, limit);
        self.client_errors = self.client_errors.clone().label_limit(ROUTE, limit);
        self.latency = self.latency.clone().label_limit(ROUTE, limit);
    }
}

enum Progress {
    /// In the inner service; no response head yet.
    Started,
    /// The response head is out; the class is known.
    Responded(StatusClass),
    /// The response head is out; the class waits for the trailers.
    AwaitingTrailers,
    /// Over; record this class.
    Finished(StatusClass),
}

/// One request in flight. Records its sample when dropped.
pub(crate) struct RequestGuard<C: ClassifyResponse> {
    metrics: Arc<RequestMetrics>,
    classifier: C,
    route: Route,
    method: &'static str,
    start: Instant,
    progress: Progress,
    /// Set while the inner future or body is being polled: if the guard drops with it set, the
    /// poll never returned, i.e. it panicked (whoever catches the panic drops us later).
    in_poll: bool,
}

impl<C: ClassifyResponse> RequestGuard<C> {
    pub(crate) fn start(
        metrics: Arc<RequestMetrics>,
        classifier: C,
        route: Route,
        method: &'static str,
    ) -> Self {
        metrics.in_flight.increment(1.0);
        RequestGuard {
            metrics,
            classifier,
            route,
            method,
            start: Instant::now(),
            progress: Progress::Started,
            in_poll: false,
        }
    }

    /// Mark the start (`true`) and the end (`false`) of a poll of the inner future or body.
    pub(crate) fn set_in_poll(&mut self, in_poll: bool) {
        self.in_poll = in_poll;
    }

    /// The response head is ready.
    pub(crate) fn responded(&mut self, status: http::StatusCode, headers: &http::HeaderMap) {
        self.progress = match self.classifier.classify_response(status, headers) {
            Classification::Done(class) => Progress::Responded(class),
            Classification::AwaitTrailers => Progress::AwaitingTrailers,
        };
    }

    /// The body ended, with these trailers if it had any.
    pub(crate) fn ended(mut self, trailers: Option<&http::HeaderMap>) {
        let class = match self.progress {
            Progress::AwaitingTrailers => self.classifier.classify_end(trailers),
            Progress::Responded(class) | Progress::Finished(class) => class,
            // A body cannot end before its head; keep the sample rather than guess a class.
            Progress::Started => StatusClass::Failed,
        };
        self.progress = Progress::Finished(class);
    }

    /// The service or the body failed.
    pub(crate) fn failed(mut self) {
        self.progress = Progress::Finished(StatusClass::Failed);
    }
}

impl<C: ClassifyResponse> Drop for RequestGuard<C> {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let class = match self.progress {
            Progress::Finished(class) => class,
            // A poll of the service or the body panicked: the server failed.
            _ if self.in_poll => StatusClass::Failed,
            // The response future was dropped before the head: the client went away (499).
            Progress::Started => StatusClass::ClientError,
            // The body was dropped after the head: the client saw this status.
            Progress::Responded(class) => class,
            Progress::AwaitingTrailers => self.classifier.classify_abandoned(),
        };
        let m = &*self.metrics;
        let labels = [self.route.as_str(), self.method, class.as_str()];
        m.requests.increment(&labels, 1);
        m.latency.record_duration(&labels, elapsed);
        let client_error = class == StatusClass::ClientError;
        if class.is_server_error() || (client_error && m.client_errors_are_errors) {
            m.errors.increment(&labels, 1);
        }
        if client_error {
            m.client_errors.increment(&labels, 1);
        }
        m.in_flight.decrement(1.0);
    }
}
