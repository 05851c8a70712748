//! Names shared by the SDK, the tower middleware, the agent and its alarms.
//!
//! The middleware records under these names; the agent derives `ErrorRate` from them and
//! provisions alarms and dashboards against them. Keeping them in one place is what makes an
//! alarm watch exactly what is published.

/// Global dimension: the service, from the builder or `SERVICE_NAME`.
pub const SERVICE_NAME: &str = "ServiceName";
/// Global dimension: the environment, from the builder, `ENVIRONMENT` or `NODE_ENV`.
pub const ENVIRONMENT: &str = "Environment";

/// Label: the route template (`/orders/{id}`), never the raw path.
pub const ROUTE: &str = "Route";
/// Label: the HTTP method; unknown methods collapse into [`OTHER_METHOD`].
pub const METHOD: &str = "Method";
/// Label: the status class (`2xx` .. `5xx`, or `error` when the service failed without a response).
pub const STATUS_CLASS: &str = "StatusClass";

/// Route value of every request that matched no route (scanners cannot explode series).
pub const UNMATCHED_ROUTE: &str = "__unmatched__";
/// Method value of every method outside the standard nine.
pub const OTHER_METHOD: &str = "__other__";
/// Value a label takes once its cardinality limit is reached.
pub const OVERFLOW_VALUE: &str = "__other__";

/// Counter: requests completed, labels Route, Method, StatusClass.
pub const REQUEST_COUNT: &str = "RequestCount";
/// Counter: requests that failed (5xx or a service error), labels Route, Method, StatusClass.
pub const ERROR_COUNT: &str = "ErrorCount";
/// Counter: requests answered 4xx, labels Route, Method, StatusClass.
pub const CLIENT_ERROR_COUNT: &str = "ClientErrorCount";
/// Histogram (recorded in nanoseconds, published in milliseconds): time until the response
/// body ended, labels Route, Method, StatusClass.
pub const RESPONSE_TIME: &str = "ResponseTime";
/// Gauge: requests in flight, no labels.
pub const IN_FLIGHT: &str = "InFlightRequests";
/// Derived by the agent each period: `100 * ErrorCount / RequestCount`, in percent.
pub const ERROR_RATE: &str = "ErrorRate";

/// Default TCP address of the agent's ingest listener.
pub const DEFAULT_AGENT_ADDR: &str = "127.0.0.1:9911";
/// Default address of the agent's admin HTTP endpoint (`/health`, `/metrics`).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9912";
/// Environment variable the SDK reads for the agent address
/// (`tcp://127.0.0.1:9911`, `127.0.0.1:9911` or `unix:///run/tally/tally.sock`).
pub const AGENT_ADDR_ENV: &str = "TALLY_AGENT_ADDR";
