//! [`Tally`]: the middleware service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use crate::classify::{method_label, ClassifyResponse};
use crate::future::ResponseFuture;
use crate::record::{RequestGuard, RequestMetrics};
use crate::route::ClassifyRoute;

/// Records request metrics around an inner service. Built by [`TallyLayer`](crate::TallyLayer).
#[derive(Clone)]
pub struct Tally<S, R, C> {
    pub(crate) inner: S,
    pub(crate) metrics: Arc<RequestMetrics>,
    pub(crate) routes: R,
    pub(crate) classifier: C,
}

impl<S, R, C> Tally<S, R, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R, C, B, ResBody> Service<Request<B>> for Tally<S, R, C>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    R: ClassifyRoute,
    C: ClassifyResponse,
{
    type Response = Response<crate::ResponseBody<ResBody, C>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route = self
            .routes
            .classify_route(request.uri(), request.extensions());
        let mut guard = RequestGuard::start(
            self.metrics.clone(),
            self.classifier.clone(),
            route,
            method_label(request.method()),
        );
        // A panic in the inner service's `call` itself (before any future exists) drops the
        // guard while this is set: a server failure, as a panic while polling is, not a
        // client that went away.
        guard.set_in_poll(true);
        let future = self.inner.call(request);
        guard.set_in_poll(false);
        ResponseFuture::new(future, guard)
    }
}

impl<S: std::fmt::Debug, R, C> std::fmt::Debug for Tally<S, R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
