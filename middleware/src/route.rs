//! Route classification: which route template a request belongs to.
//!
//! The `Route` label is always a template (`/orders/{id}`), never the raw path: a scanner that
//! requests a million distinct paths must not create a million series. Every request that
//! matches no route gets [`UNMATCHED_ROUTE`]. On top of that, the SDK's cardinality limit on the
//! `Route` label ([`TallyLayer::route_limit`](crate::TallyLayer::route_limit)) bounds what a
//! careless classifier could do.
//!
//! - With the `axum` feature (on by default), [`MatchedPathRoute`] reads axum's
//!   [`MatchedPath`](axum::extract::MatchedPath). Add the layer with `Router::layer` so it runs
//!   after routing; wrapped around the outside of a `Router` it would see no matched path and
//!   put every request under [`UNMATCHED_ROUTE`].
//! - For other routers (plain hyper, tonic), [`RoutePatterns`] matches the path against a list
//!   of templates, or any closure `Fn(&Uri, &Extensions) -> Route` will do:
//!
//! ```
//! use tally_tower::{Route, RoutePatterns, TallyLayer};
//!
//! # fn layers(tally: &tally::Tally) {
//! let patterns = RoutePatterns::new(["/orders/{id}", "/orders", "/files/{*path}"]);
//! let layer = TallyLayer::new(tally).route_classifier(patterns);
//!
//! let by_prefix = TallyLayer::new(tally).route_classifier(|uri: &http::Uri, _: &http::Extensions| {
//!     if uri.path().starts_with("/admin/") {
//!         Route::from_static("/admin")
//!     } else {
//!         Route::UNMATCHED
//!     }
//! });
//! # let _ = (layer, by_prefix);
//! # }
//! ```

use std::sync::Arc;

use http::{Extensions, Uri};
use tally::conventions::UNMATCHED_ROUTE;

/// A route template: the `Route` label value of a request. Cloning never allocates.
#[derive(Clone, Debug)]
pub struct Route(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
}

impl Route {
    /// The route of every request that matched no route ([`UNMATCHED_ROUTE`]).
    pub const UNMATCHED: Route = Route(Repr::Static(UNMATCHED_ROUTE));

    /// A route from a static template.
    pub const fn from_static(template: &'static str) -> Self {
        Route(Repr::Static(template))
    }

    /// The template, as the label value.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
            #[cfg(feature = "axum")]
            Repr::Matched(m) => m.as_str(),
        }
    }
}

impl From<Arc<str>> for Route {
    fn from(template: Arc<str>) -> Self {
        Route(Repr::Shared(template))
    }
}

#[cfg(feature = "axum")]
impl From<axum::extract::MatchedPath> for Route {
    fn from(matched: axum::extract::MatchedPath) -> Self {
        Route(Repr::Matched(matched))
    }
}

/// Decides the [`Route`] of a request from its URI and extensions, before the inner service
/// runs. A type parameter of the layer; closures `Fn(&Uri, &Extensions) -> Route` implement it.
pub trait ClassifyRoute: Clone {
    /// The route template of this request, or [`Route::UNMATCHED`].
    fn classify_route(&self, uri: &Uri, extensions: &Extensions) -> Route;
}

impl<F> ClassifyRoute for F
where
    F: Fn(&Uri, &Extensions) -> Route + Clone,
{
    fn classify_route(&self, uri: &Uri, extensions: &Extensions) -> Route {
        self(uri, extensions)
    }
}

/// axum's matched route template (`/orders/{id}`), or [`Route::UNMATCHED`] for requests that
/// reached the fallback. The default route classifier with the `axum` feature.
#[cfg(feature = "axum")]
#[derive(Clone, Copy, Debug, Default)]
pub struct MatchedPathRoute;

#[cfg(feature = "axum")]
impl ClassifyRoute for MatchedPathRoute {
    fn classify_route(&self, _uri: &Uri, extensions: &Extensions) -> Route {
        match extensions.get::<axum::extract::MatchedPath>() {
            Some(matched) => Route::from(matched.clone()),
            None => Route::UNMATCHED,
        }
    }
}

/// The route classifier [`TallyLayer::new`](crate::TallyLayer::new) uses: [`MatchedPathRoute`]
/// with the `axum` feature, else an empty [`RoutePatterns`] (every request unmatched until you
/// call [`TallyLayer::route_classifier`](crate::TallyLayer::route_classifier)).
#[cfg(feature = "axum")]
pub type DefaultRoutes = MatchedPathRoute;
/// The route classifier [`TallyLayer::new`](crate::TallyLayer::new) uses: [`MatchedPathRoute`]
/// with the `axum` feature, else an empty [`RoutePatterns`] (every request unmatched until you
/// call [`TallyLayer::route_classifier`](crate::TallyLayer::route_classifier)).
#[cfg(not(feature = "axum"))]
pub type DefaultRoutes = RoutePatterns;

/// Matches request paths against route templates in the order given; the first match wins.
///
/// Template syntax (axum's): literal segments, `{name}` for exactly one segment, and
/// `{*name}` as the last segment for one or more remaining segments. A trailing slash is
/// significant, as in axum. Put specific templates before general ones.
#[derive(Clone, Debug, Default)]
pub struct RoutePatterns {
    patterns: Arc<[Pattern]>,
}

#[derive(Debug)]
struct Pattern {
    template: Arc<str>,
    segments: Vec<Segment>,
}

#[derive(Debug, PartialEq)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

impl RoutePatterns {
    /// Patterns from templates such as `/orders/{id}`.
    pub fn new<I, T>(templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let patterns = templates
            .into_iter()
            .map(|t| {
                let template = t.as_ref();
                Pattern {
                    template: Arc::from(template),
                    segments: split(template)
                        .map(|seg| {
                            if seg.starts_with("{*") && seg.ends_with('}') {
                                Segment::Rest
                            } else if seg.starts_with('{') && seg.ends_with('}') {
                                Segment::Param
                            } else {
                                Segment::Literal(seg.to_owned())
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        RoutePatterns { patterns }
    }

    /// The template that `path` matches, if any.
    pub fn find(&self, path: &str) -> Option<&str> {
        self.find_pattern(path).map(|p| &*p.template)
    }

    fn find_pattern(&self, path: &str) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.matches(path))
    }
}

fn split(path: &str) -> std::str::Split<'_, char> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        let mut parts = split(path);
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Rest, Some(part)) => return !part.is_empty(),
                (Segment::Param, Some(part)) if !part.is_empty() => {}
                (Segment::Literal(lit), Some(part)) if lit == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

impl ClassifyRoute for RoutePatterns {
    fn classify_route(&self, uri: &Uri, _extensions: &Extensions) -> Route {
        match self.find_pattern(uri.path()) {
            Some(pattern) => Route::from(pattern.template.clone()),
            None => Route::UNMATCHED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_literals_params_and_rest_segments() {
        let routes = RoutePatterns::new(["/", "/orders", "/orders/{id}", "/files/{*path}"]);
        assert_eq!(routes.find("/"), Some("/"));
        assert_eq!(routes.find("/orders"), Some("/orders"));
        assert_eq!(routes.find("/orders/42"), Some("/orders/{id}"));
        assert_eq!(routes.find("/files/a/b/c"), Some("/files/{*path}"));
        assert_eq!(routes.find("/orders/42/items"), None);
        assert_eq!(routes.find("/orders/"), None);
        assert_eq!(routes.find("/files"), None);
        assert_eq!(routes.find("/wp-admin.php"), None);
    }

    #[test]
    fn the_first_matching_template_wins() {
        let routes = RoutePatterns::new(["/orders/new", "/orders/{id}"]);
        assert_eq!(routes.find("/orders/new"), Some("/orders/new"));
        assert_eq!(routes.find("/orders/7"), Some("/orders/{id}"));
    }

    #[test]
    fn unmatched_paths_never_become_labels() {
        let routes = RoutePatterns::new(["/health"]);
        let uri: Uri = "/.env?probe=1".parse().unwrap();
        let route = routes.classify_route(&uri, &Extensions::new());
        assert_eq!(route.as_str(), UNMATCHED_ROUTE);
    }
}
