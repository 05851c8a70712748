//! [`ResponseBody`]: carries the request guard until the body ends or is dropped, so latency
//! covers streaming and an abandoned stream is still counted.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::classify::ClassifyResponse;
use crate::record::RequestGuard;

pin_project! {
    /// The response body of [`Tally`](crate::Tally). The request is recorded when the body
    /// yields its last frame (trailers included, for gRPC), fails, or is dropped.
    pub struct ResponseBody<B, C: ClassifyResponse> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard<C>>,
    }
}

impl<B, C: ClassifyResponse> ResponseBody<B, C> {
    pub(crate) fn new(inner: B, guard: RequestGuard<C>) -> Self {
        ResponseBody {
            inner,
            guard: Some(guard),
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Body, C: ClassifyResponse> Body for ResponseBody<B, C> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(guard) = this.guard.as_mut() {
            guard.set_in_poll(true);
        }
        let frame = this.inner.poll_frame(cx);
        if let Some(guard) = this.guard.as_mut() {
            guard.set_in_poll(false);
        }
        let frame = ready!(frame);
        match &frame {
            None => {
                if let Some(guard) = this.guard.take() {
                    guard.ended(None);
                }
            }
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(guard) = this.guard.take() {
                        guard.ended(Some(trailers));
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(guard) = this.guard.take() {
                    guard.failed();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: std::fmt::Debug, C: ClassifyResponse> std::fmt::Debug for ResponseBody<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
