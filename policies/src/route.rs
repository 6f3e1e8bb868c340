//! Routes and route matching: pure functions, no I/O.
//!
//! A request is matched by host first, then by path, and the most specific
//! route wins whatever the file order:
//! exact host > longest wildcard (`*.example.com`) > any host; within a host,
//! exact path > longest prefix. When the most specific host has no route for
//! the path, less specific hosts are tried, so a catch-all route still
//! catches.

use crate::config::{Limits, Timeouts};
use std::collections::HashMap;

/// Which hosts a route serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// This host exactly (lower case, no port).
    Exact(String),
    /// Any host ending in `.suffix` (stored with the leading dot, lower case).
    Wildcard(String),
}

/// Which paths a route serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// The path is this or continues it at a segment boundary.
    Prefix(String),
}

impl PathMatch {
    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                if p.ends_with('/') {
                    path.starts_with(p.as_str())
                } else {
                    path.starts_with(p.as_str())
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
                }
            }
        }
    }

    /// Higher is more specific.
    fn specificity(&self) -> (u8, usize) {
        match self {
            PathMatch::Exact(p) => (1, p.len()),
            PathMatch::Prefix(p) => (0, p.len()),
        }
    }
}

/// A validated route. Later features (filters, cache policy, rate-limit
/// buckets) attach here as further fields; matching never looks at them.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Name in logs and metrics.
    pub name: String,
    /// Host matcher.
    pub host: HostMatch,
    /// Path matcher.
    pub path: PathMatch,
    /// Upstream group name (guaranteed to exist in the same config).
    pub upstream: String,
    /// Send the client's Host upstream.
    pub preserve_host: bool,
    /// Extra attempts on other backends for idempotent requests.
    pub retries: u32,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Request limits.
    pub limits: Limits,
    /// Filters in request order.
    pub filters: Vec<crate::config::FilterSpec>,
    /// Response caching, when on.
    pub cache: Option<crate::config::CachePolicy>,
}

/// Index of a route in [`RouteTable::routes`].
pub type RouteId = usize;

/// Routes compiled for lookup.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact_hosts: HashMap<String, Vec<RouteId>>,
    /// Sorted longest suffix first.
    wildcard_hosts: Vec<(String, Vec<RouteId>)>,
    any_host: Vec<RouteId>,
}

impl RouteTable {
    /// Compiles routes; each bucket is ordered most specific path first.
    pub fn new(routes: Vec<Route>) -> Self {
        let mut exact_hosts: HashMap<String, Vec<RouteId>> = HashMap::new();
        let mut wildcards: HashMap<String, Vec<RouteId>> = HashMap::new();
        let mut any_host = Vec::new();
        for (id, r) in routes.iter().enumerate() {
            match &r.host {
                HostMatch::Any => any_host.push(id),
                HostMatch::Exact(h) => exact_hosts.entry(h.clone()).or_default().push(id),
                HostMatch::Wildcard(s) => wildcards.entry(s.clone()).or_default().push(id),
            }
        }
        let by_path = |ids: &mut Vec<RouteId>| {
            ids.sort_by(|a, b| {
                routes[*b]
                    .path
                    .specificity()
                    .cmp(&routes[*a].path.specificity())
            })
        };
        exact_hosts.values_mut().for_each(by_path);
        by_path(&mut any_host);
        let mut wildcard_hosts: Vec<(String, Vec<RouteId>)> = wildcards.into_iter().collect();
        wildcard_hosts.iter_mut().for_each(|(_, ids)| by_path(ids));
        wildcard_hosts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Self {
            routes,
            exact_hosts,
            wildcard_hosts,
            any_host,
        }
    }

    /// All routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route with this id.
    pub fn get(&self, id: RouteId) -> Option<&Route> {
        self.routes.get(id)
    }

    /// The most specific route for `host` (any case, port allowed) and `path`
    /// (query allowed, ignored).
    pub fn find(&self, host: &str, path: &str) -> Option<RouteId> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let host = normalize_host(host);
        let first_match = |ids: &[RouteId]| {
            ids.iter()
                .copied()
                .find(|id| self.routes[*id].path.matches(path))
        };
        if let Some(found) = self
            .exact_hosts
            .get(host.as_ref())
            .and_then(|ids| first_match(ids))
        {
            return Some(found);
        }
        for (suffix, ids) in &self.wildcard_hosts {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(found) = first_match(ids) {
                    return Some(found);
                }
            }
        }
        first_match(&self.any_host)
    }
}

/// Lower case, without port or trailing dot. Borrowed when already normal.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let no_port = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let trimmed = no_port.strip_suffix('.').unwrap_or(no_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(name: &str, host: HostMatch, path: PathMatch) -> Route {
        Route {
            name: name.into(),
            host,
            path,
            upstream: "u".into(),
            preserve_host: true,
            retries: 1,
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                read: Duration::from_secs(1),
                write: Duration::from_secs(1),
            },
            limits: Limits {
                max_header_bytes: 1,
                max_body_bytes: 1,
            },
            filters: Vec::new(),
            cache: None,
        }
    }

    fn table() -> RouteTable {
        use HostMatch::{Any, Wildcard};
        use PathMatch::Prefix;
        let host = |h: &str| HostMatch::Exact(h.into());
        RouteTable::new(vec![
            route("catch-all", Any, Prefix("/".into())),
            route("any-api", Any, Prefix("/api".into())),
            route("wild", Wildcard(".example.com".into()), Prefix("/".into())),
            route(
                "deep-wild",
                Wildcard(".eu.example.com".into()),
                Prefix("/".into()),
            ),
            route("api-host", host("api.example.com"), Prefix("/v1".into())),
            route(
                "api-host-v1-long",
                host("api.example.com"),
                Prefix("/v1/users".into()),
            ),
            route(
                "api-exact",
                host("api.example.com"),
                PathMatch::Exact("/v1/users".into()),
            ),
        ])
    }

    fn name(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        t.find(host, path).map(|id| t.routes()[id].name.clone())
    }

    #[test]
    fn most_specific_wins_regardless_of_order() {
        let t = table();
        assert_eq!(
            name(&t, "api.example.com", "/v1/users").as_deref(),
            Some("api-exact")
        );
        assert_eq!(
            name(&t, "api.example.com", "/v1/users/7").as_deref(),
            Some("api-host-v1-long")
        );
        assert_eq!(
            name(&t, "api.example.com", "/v1/x?q=1").as_deref(),
            Some("api-host")
        );
        // No path match under the exact host: fall back to the wildcard.
        assert_eq!(
            name(&t, "api.example.com", "/other").as_deref(),
            Some("wild")
        );
        assert_eq!(
            name(&t, "x.eu.example.com", "/").as_deref(),
            Some("deep-wild")
        );
        assert_eq!(name(&t, "www.example.com", "/").as_deref(), Some("wild"));
        // The bare domain does not match `*.example.com`.
        assert_eq!(
            name(&t, "example.com", "/api/x").as_deref(),
            Some("any-api")
        );
        assert_eq!(name(&t, "other.test", "/").as_deref(), Some("catch-all"));
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let p = PathMatch::Prefix("/api".into());
        assert!(p.matches("/api"));
        assert!(p.matches("/api/"));
        assert!(p.matches("/api/x"));
        assert!(!p.matches("/apix"));
        let slash = PathMatch::Prefix("/static/".into());
        assert!(slash.matches("/static/a.css"));
        assert!(!slash.matches("/static"));
    }

    #[test]
    fn host_is_normalized() {
        let t = table();
        assert_eq!(
            name(&t, "API.Example.COM:8443", "/v1").as_deref(),
            Some("api-host")
        );
        assert_eq!(
            name(&t, "api.example.com.", "/v1").as_deref(),
            Some("api-host")
        );
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn no_route_is_none() {
        let t = RouteTable::new(vec![route(
            "only",
            HostMatch::Exact("a.test".into()),
            PathMatch::Prefix("/".into()),
        )]);
        assert_eq!(t.find("b.test", "/"), None);
    }
}
