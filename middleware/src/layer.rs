//! [`TallyLayer`]: the configuration, shared by every service it wraps.

use std::sync::Arc;

use tower::Layer;

use crate::classify::HttpClassifier;
use crate::record::RequestMetrics;
use crate::route::DefaultRoutes;
use crate::service::Tally;

/// Wraps services in [`Tally`]: per request, `RequestCount`, `ErrorCount`, `ClientErrorCount`
/// and the `ResponseTime` histogram labelled by route, method and status class, and the
/// `InFlightRequests` gauge.
///
/// `R` decides the route ([`ClassifyRoute`](crate::ClassifyRoute)), `C` the outcome
/// ([`ClassifyResponse`](crate::ClassifyResponse)).
#[derive(Clone)]
pub struct TallyLayer<R = DefaultRoutes, C = HttpClassifier> {
    pub(crate) metrics: Arc<RequestMetrics>,
    pub(crate) routes: R,
    pub(crate) classifier: C,
}

impl TallyLayer {
    /// A layer recording into `tally`, with the default route classifier and the HTTP status
    /// classifier. Resolves the metric families once, here.
    pub fn new(tally: &tally::Tally) -> Self {
        TallyLayer {
            metrics: Arc::new(RequestMetrics::new(tally)),
            routes: DefaultRoutes::default(),
            classifier: HttpClassifier,
        }
    }
}

impl<R, C> TallyLayer<R, C> {
    /// Use another route classifier (a [`RoutePatterns`](crate::RoutePatterns), a closure, ...).
    pub fn route_classifier<R2>(self, routes: R2) -> TallyLayer<R2, C> {
        TallyLayer {
            metrics: self.metrics,
            routes,
            classifier: self.classifier,
        }
    }

    /// Use another response classifier (e.g. [`GrpcClassifier`](crate::GrpcClassifier)).
    pub fn response_classifier<C2>(self, classifier: C2) -> TallyLayer<R, C2> {
        TallyLayer {
            metrics: self.metrics,
            routes: self.routes,
            classifier,
        }
    }

    /// Whether 4xx responses also count in `ErrorCount` (default `false`: they count only in
    /// `ClientErrorCount`, so a misbehaving client cannot page the service's owners).
    pub fn client_errors_are_errors(mut self, yes: bool) -> Self {
        Arc::make_mut(&mut self.metrics).client_errors_are_errors = yes;
        self
    }

    /// Cardinality limit of the `Route` label (default: the SDK's `label_limit`). Past it, new
    /// routes are recorded as `__other__` and the overflow is counted by the SDK.
    pub fn route_limit(mut self, limit: usize) -> Self {
        Arc::make_mut(&mut self.metrics).set_route_limit(limit);
        self
    }
}

impl<S, R: Clone, C: Clone> Layer<S> for TallyLayer<R, C> {
    type Service = Tally<S, R, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Tally {
            inner,
            metrics: self.metrics.clone(),
            routes: self.routes.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<R, C> std::fmt::Debug for TallyLayer<R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TallyLayer")
            .field(
                "client_errors_are_errors",
                &self.metrics.client_errors_are_errors,
            )
            .finish_non_exhaustive()
    }
}
