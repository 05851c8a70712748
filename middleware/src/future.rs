//! [`ResponseFuture`]: carries the request guard until the response head is ready, then hands
//! it to the body.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::classify::ClassifyResponse;
use crate::record::RequestGuard;

pin_project! {
    /// The response future of [`Tally`](crate::Tally). Dropped before it completes (the client
    /// went away), it records the request as a client error, like nginx's 499.
    pub struct ResponseFuture<F, C: ClassifyResponse> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard<C>>,
    }
}

impl<F, C: ClassifyResponse> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, guard: RequestGuard<C>) -> Self {
        ResponseFuture {
            inner,
            guard: Some(guard),
        }
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: ClassifyResponse,
{
    type Output = Result<Response<ResponseBody<B, C>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(guard) = this.guard.as_mut() {
            guard.set_in_poll(true);
        }
        let result = this.inner.poll(cx);
        if let Some(guard) = this.guard.as_mut() {
            guard.set_in_poll(false);
        }
        let result = ready!(result);
        let mut guard = this
            .guard
            .take()
            .expect("ResponseFuture polled after it completed");
        Poll::Ready(match result {
            Ok(response) => {
                guard.responded(response.status(), response.headers());
                Ok(response.map(|body| ResponseBody::new(body, guard)))
            }
            Err(error) => {
                guard.failed();
                Err(error)
            }
        })
    }
}
