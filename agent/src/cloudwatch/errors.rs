//! What a failed CloudWatch call means: the one classification the publisher (PutMetricData)
//! and the alarm provisioner (PutMetricAlarm, PutDashboard) both use, so a throttle, a
//! credential problem or a refused payload is recognised the same way everywhere.

use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};

/// The kind of a failed attempt. Every kind is an `outcome` label of
/// `tally_publish_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// HTTP 400 `Throttling` / 429: over the account's PutMetricData rate.
    Throttled = 0,
    /// HTTP 5xx or `InternalServiceFault`.
    Server = 1,
    /// No answer within `attempt_timeout_ms` / `connect_timeout_ms`.
    Timeout = 2,
    /// Connection refused, reset or closed; an answer that is not HTTP.
    Network = 3,
    /// Credentials missing, expired or refused (401/403, `ExpiredToken`, no provider). Not the
    /// data's fault: the data waits for the operator to fix the role or the environment.
    Auth = 4,
    /// The payload was refused (HTTP 400: InvalidParameterValue, InvalidParameterCombination,
    /// MissingParameter; HTTP 413).
    Invalid = 5,
    /// Anything else (request construction, an unexpected answer such as a 404 from a wrong
    /// endpoint): retried, then kept pending like a transient failure.
    Other = 6,
}

impl ErrorKind {
    /// Number of kinds.
    pub const COUNT: usize = 7;
    /// Every kind, in discriminant order.
    pub const ALL: [ErrorKind; Self::COUNT] = [
        ErrorKind::Throttled,
        ErrorKind::Server,
        ErrorKind::Timeout,
        ErrorKind::Network,
        ErrorKind::Auth,
        ErrorKind::Invalid,
        ErrorKind::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Server => "server_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Network => "network",
            ErrorKind::Auth => "auth",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Other => "other",
        }
    }

    /// Whether the same request may succeed later (retry, then keep it pending).
    pub fn is_transient(self) -> bool {
        !matches!(self, ErrorKind::Invalid)
    }
}

/// A failed PutMetricData attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PutMetricData failed ({kind:?}): {message}")]
pub struct SendError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// CloudWatch's message or the transport's error, for the log.
    pub message: String,
}

/// Error codes that mean "slow down" (CloudWatch answers `Throttling`; the others are what AWS
/// front ends answer).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
];

/// Error codes that mean the credentials, not the data, are wrong.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidAccessKeyId",
    "NotAuthorized",
];

/// Error codes of the server's own failures.
const SERVER_CODES: &[&str] = &[
    "InternalServiceFault",
    "InternalServiceError",
    "InternalFailure",
    "ServiceUnavailable",
];

/// Classifies a CloudWatch error answer by HTTP status and error code (the code may carry a
/// Smithy namespace prefix, `com.amazonaws.cloudwatch#Throttling`).
pub fn classify_answer(status: u16, code: Option<&str>) -> ErrorKind {
    let code = code.map(|c| c.rsplit('#').next().unwrap_or(c));
    if let Some(code) = code {
        if THROTTLING_CODES.contains(&code) {
            return ErrorKind::Throttled;
        }
        if AUTH_CODES.contains(&code) {
            return ErrorKind::Auth;
        }
        if SERVER_CODES.contains(&code) {
            return ErrorKind::Server;
        }
    }
    if code.is_some_and(|c| NOT_THE_PAYLOAD_CODES.contains(&c)) {
        return ErrorKind::Other;
    }
    match status {
        429 => ErrorKind::Throttled,
        401 | 403 => ErrorKind::Auth,
        408 => ErrorKind::Timeout,
        500..=599 => ErrorKind::Server,
        // What CloudWatch answers about a payload: 400 (InvalidParameterValue,
        // InvalidParameterCombination, MissingParameter) and 413 (too large). Other 4xx
        // (404 from a wrong endpoint path, 405, a proxy's 407, ...) say nothing about the
        // datums: bisecting and dropping them would lose everything to a misconfiguration,
        // so they are kept and retried like any other failure.
        400 | 413 => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    }
}

/// 400 answers that are not about the payload: the endpoint does not speak CloudWatch's
/// PutMetricData (a wrong `endpoint_url`, an emulator without the operation).
const NOT_THE_PAYLOAD_CODES: &[&str] = &[
    "UnknownOperationException",
    "UnknownOperation",
    "InvalidAction",
    "OptInRequired",
];

/// Classifies an SDK error and keeps a message for the log (never the request body).
pub fn classify_sdk_error<E>(
    err: &SdkError<E, aws_sdk_cloudwatch::config::http::HttpResponse>,
) -> SendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = aws_sdk_cloudwatch::error::DisplayErrorContext(err).to_string();
    let kind = match err {
        SdkError::TimeoutError(_) => ErrorKind::Timeout,
        SdkError::DispatchFailure(d) => {
            if d.is_timeout() {
                ErrorKind::Timeout
            } else if d.is_user() {
                // A request the connector refused to send (bad endpoint URL, ...): retrying
                // cannot help.
                ErrorKind::Other
            } else {
                // I/O errors and "other" connector failures alike: a connection reset, or
                // closed before the answer was complete, is a network fault worth a retry.
                ErrorKind::Network
            }
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            if status >= 400 {
                classify_answer(status, None)
            } else {
                ErrorKind::Network
            }
        }
        SdkError::ServiceError(s) => classify_answer(s.raw().status().as_u16(), s.err().code()),
        _ => ErrorKind::Other,
    };
    SendError { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_transient_whatever_the_status() {
        assert_eq!(
            classify_answer(400, Some("Throttling")),
            ErrorKind::Throttled
        );
        assert_eq!(
            classify_answer(400, Some("com.amazonaws.cloudwatch#Throttling")),
            ErrorKind::Throttled
        );
        assert_eq!(classify_answer(429, None), ErrorKind::Throttled);
        assert!(ErrorKind::Throttled.is_transient());
    }

    #[test]
    fn server_errors_and_timeouts_are_transient() {
        assert_eq!(classify_answer(503, None), ErrorKind::Server);
        assert_eq!(
            classify_answer(500, Some("InternalServiceFault")),
            ErrorKind::Server
        );
        assert_eq!(classify_answer(408, None), ErrorKind::Timeout);
        for k in [
            ErrorKind::Server,
            ErrorKind::Timeout,
            ErrorKind::Network,
            ErrorKind::Auth,
        ] {
            assert!(k.is_transient(), "{k:?}");
        }
    }

    #[test]
    fn invalid_parameters_are_the_payloads_fault_and_not_retried() {
        for code in [
            "InvalidParameterValue",
            "InvalidParameterCombination",
            "MissingParameter",
        ] {
            let kind = classify_answer(400, Some(code));
            assert_eq!(kind, ErrorKind::Invalid, "{code}");
            assert!(!kind.is_transient());
        }
        assert_eq!(classify_answer(413, None), ErrorKind::Invalid);
    }

    #[test]
    fn a_4xx_that_is_not_about_the_payload_keeps_the_data_for_a_retry() {
        // A wrong endpoint path, a method the endpoint refuses, a proxy asking for
        // credentials, a conflict, an endpoint that does not know PutMetricData.
        for (status, code) in [
            (404, None),
            (405, None),
            (407, None),
            (409, Some("ConcurrentModification")),
            (400, Some("UnknownOperationException")),
            (400, Some("com.amazonaws.cloudwatch#InvalidAction")),
        ] {
            let kind = classify_answer(status, code);
            assert_eq!(kind, ErrorKind::Other, "{status} {code:?}");
            assert!(kind.is_transient());
        }
    }

    #[test]
    fn credential_errors_wait_for_the_operator_instead_of_dropping_data() {
        assert_eq!(classify_answer(403, Some("AccessDenied")), ErrorKind::Auth);
        assert_eq!(classify_answer(400, Some("ExpiredToken")), ErrorKind::Auth);
        assert_eq!(classify_answer(403, None), ErrorKind::Auth);
    }
}
