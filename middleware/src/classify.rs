//! Outcome classification: what a response (or its absence) means for the error counters.
//!
//! Every finished request gets one [`StatusClass`]. It becomes the `StatusClass` label and
//! decides which counters move: `ServerError` and `Failed` count in `ErrorCount`,
//! `ClientError` counts in `ClientErrorCount` (and in `ErrorCount` too when the layer is built
//! with [`TallyLayer::client_errors_are_errors`](crate::TallyLayer::client_errors_are_errors)).
//!
//! [`HttpClassifier`] (the default) reads the HTTP status. [`GrpcClassifier`] reads the
//! `grpc-status` header of a trailers-only response or, for a normal gRPC response, the
//! `grpc-status` trailer at the end of the body, and maps the gRPC code onto the same classes
//! (the mapping grpc-gateway uses), so HTTP and gRPC services share dashboards and alarms:
//!
//! ```
//! use tally_tower::{GrpcClassifier, TallyLayer};
//!
//! # fn layer(tally: &tally::Tally) {
//! let layer = TallyLayer::new(tally).response_classifier(GrpcClassifier);
//! # let _ = layer;
//! # }
//! ```

use http::{HeaderMap, Method, StatusCode};
use tally::conventions::OTHER_METHOD;

/// The class of a finished request: the `StatusClass` label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// `1xx`.
    Informational,
    /// `2xx`.
    Success,
    /// `3xx`.
    Redirection,
    /// `4xx`: the client's fault, including clients that went away before the response
    /// (nginx's 499, gRPC's `CANCELLED`).
    ClientError,
    /// `5xx`: the server's fault.
    ServerError,
    /// `error`: the service returned an error instead of a response, the response body failed
    /// mid-stream, or the handler panicked through the middleware.
    Failed,
}

impl StatusClass {
    /// The class of an HTTP status code.
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }

    /// The class of a gRPC status code, as grpc-gateway maps codes onto HTTP statuses
    /// (`OK` -> 2xx; `CANCELLED`, `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`,
    /// `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`, `ABORTED`,
    /// `OUT_OF_RANGE`, `UNAUTHENTICATED` -> 4xx; everything else, unknown codes included -> 5xx).
    pub fn from_grpc_code(code: u32) -> Self {
        match code {
            0 => Self::Success,
            1 | 3 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 16 => Self::ClientError,
            _ => Self::ServerError,
        }
    }

    /// The label value: `1xx` .. `5xx`, or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
            Self::Failed => "error",
        }
    }

    /// Whether this class always counts in `ErrorCount` (5xx and service failures).
    pub fn is_server_error(self) -> bool {
        matches!(self, Self::ServerError | Self::Failed)
    }
}

/// What a classifier can tell from the response head alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    /// The outcome is known now.
    Done(StatusClass),
    /// The outcome is in the trailers (gRPC): ask [`ClassifyResponse::classify_end`] when the
    /// body ends, or [`ClassifyResponse::classify_abandoned`] if it is dropped first.
    AwaitTrailers,
}

/// Decides the [`StatusClass`] of a response. A type parameter of the layer, so it costs no
/// dynamic dispatch; implement it to, say, count a 404 on a lookup route as a success.
pub trait ClassifyResponse: Clone {
    /// Classify from the status and headers, when the response head is ready.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Classification;

    /// Classify at the end of the body, for a response that returned
    /// [`Classification::AwaitTrailers`]; `trailers` is `None` when the body ended without any.
    /// Classifiers that never await trailers need not override it.
    fn classify_end(&self, trailers: Option<&HeaderMap>) -> StatusClass {
        let _ = trailers;
        StatusClass::ServerError
    }

    /// Classify a response whose body was dropped (the client went away) before the trailers
    /// that [`Classification::AwaitTrailers`] waited for arrived.
    fn classify_abandoned(&self) -> StatusClass {
        StatusClass::ClientError
    }
}

/// The default classifier: the class of the HTTP status code.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier;

impl ClassifyResponse for HttpClassifier {
    fn classify_response(&self, status: StatusCode, _headers: &HeaderMap) -> Classification {
        Classification::Done(StatusClass::from_status(status))
    }
}

/// A classifier for gRPC services (tonic or any other): the outcome is the `grpc-status`,
/// read from the headers of a trailers-only response or from the trailers at the end of the
/// body. Responses that are not gRPC (a 404 from the router, a non-200 status) are classified
/// by their HTTP status. A body that ends without `grpc-status` counts as `UNKNOWN` (5xx); a
/// body dropped before its trailers counts as `CANCELLED` (4xx).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcClassifier;

const GRPC_STATUS: &str = "grpc-status";
/// gRPC's `UNKNOWN`: what a missing or unparseable `grpc-status` means.
const GRPC_UNKNOWN: u32 = 2;

fn grpc_code(headers: &HeaderMap) -> Option<u32> {
    let value = headers.get(GRPC_STATUS)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(GRPC_UNKNOWN),
    )
}

impl ClassifyResponse for GrpcClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Classification {
        if status != StatusCode::OK {
            return Classification::Done(StatusClass::from_status(status));
        }
        if let Some(code) = grpc_code(headers) {
            return Classification::Done(StatusClass::from_grpc_code(code));
        }
        let is_grpc = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if is_grpc {
            Classification::AwaitTrailers
        } else {
            Classification::Done(StatusClass::Success)
        }
    }

    fn classify_end(&self, trailers: Option<&HeaderMap>) -> StatusClass {
        StatusClass::from_grpc_code(trailers.and_then(grpc_code).unwrap_or(GRPC_UNKNOWN))
    }

    fn classify_abandoned(&self) -> StatusClass {
        StatusClass::ClientError
    }
}

/// The `Method` label value: the nine standard methods by name, anything else
/// [`OTHER_METHOD`], so invented methods cannot create series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => OTHER_METHOD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn status_codes_fall_into_their_hundreds() {
        assert_eq!(
            StatusClass::from_status(StatusCode::CONTINUE).as_str(),
            "1xx"
        );
        assert_eq!(
            StatusClass::from_status(StatusCode::NO_CONTENT).as_str(),
            "2xx"
        );
        assert_eq!(StatusClass::from_status(StatusCode::FOUND).as_str(), "3xx");
        assert_eq!(
            StatusClass::from_status(StatusCode::NOT_FOUND).as_str(),
            "4xx"
        );
        assert_eq!(
            StatusClass::from_status(StatusCode::BAD_GATEWAY).as_str(),
            "5xx"
        );
        assert!(StatusClass::from_status(StatusCode::INTERNAL_SERVER_ERROR).is_server_error());
        assert!(!StatusClass::from_status(StatusCode::NOT_FOUND).is_server_error());
        assert!(StatusClass::Failed.is_server_error());
    }

    #[test]
    fn invented_methods_collapse_into_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::TRACE), "TRACE");
        let invented = Method::from_bytes(b"SCAN").unwrap();
        assert_eq!(method_label(&invented), OTHER_METHOD);
    }

    #[test]
    fn grpc_codes_map_like_grpc_gateway() {
        let client = [1, 3, 5, 6, 7, 8, 9, 10, 11, 16];
        for code in 0..=20 {
            let expected = if code == 0 {
                StatusClass::Success
            } else if client.contains(&code) {
                StatusClass::ClientError
            } else {
                StatusClass::ServerError
            };
            assert_eq!(StatusClass::from_grpc_code(code), expected, "code {code}");
        }
    }

    #[test]
    fn grpc_outcome_comes_from_headers_of_trailers_only_responses_or_from_trailers() {
        let grpc = GrpcClassifier;
        let mut head = HeaderMap::new();
        head.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        assert_eq!(
            grpc.classify_response(StatusCode::OK, &head),
            Classification::AwaitTrailers
        );

        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("13"));
        assert_eq!(grpc.classify_end(Some(&trailers)), StatusClass::ServerError);
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        assert_eq!(grpc.classify_end(Some(&trailers)), StatusClass::ClientError);
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(grpc.classify_end(Some(&trailers)), StatusClass::Success);
        assert_eq!(grpc.classify_end(None), StatusClass::ServerError);
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("garbage"));
        assert_eq!(grpc.classify_end(Some(&trailers)), StatusClass::ServerError);
        assert_eq!(grpc.classify_abandoned(), StatusClass::ClientError);

        head.insert(GRPC_STATUS, HeaderValue::from_static("16"));
        assert_eq!(
            grpc.classify_response(StatusCode::OK, &head),
            Classification::Done(StatusClass::ClientError)
        );
        assert_eq!(
            grpc.classify_response(StatusCode::NOT_FOUND, &HeaderMap::new()),
            Classification::Done(StatusClass::ClientError)
        );
        assert_eq!(
            grpc.classify_response(StatusCode::OK, &HeaderMap::new()),
            Classification::Done(StatusClass::Success)
        );
    }
}
