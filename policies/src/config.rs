//! The validated configuration: what the gateway runs from.
//!
//! These types are built only by [`crate::validate`]; they hold parsed
//! addresses, durations and sizes, non-zero thresholds and a compiled
//! [`RouteTable`], so the gateway never re-checks a value at request time.

use crate::route::RouteTable;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

/// A whole, valid configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Name of this PoP (in `Via`, `/status`, metrics).
    pub pop_name: String,
    /// Process-wide settings.
    pub server: Server,
    /// Logging.
    pub log: Log,
    /// The admin listener.
    pub admin: Admin,
    /// Public listeners, in file order.
    pub listeners: Vec<Listener>,
    /// Upstream groups by name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// Routes, compiled for matching.
    pub routes: RouteTable,
    /// Rate-limit buckets by name.
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// Key sets by name.
    pub key_sets: BTreeMap<String, KeySet>,
    /// The response cache store.
    pub cache: CacheSettings,
}

/// The process-wide response cache store.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Total bytes held.
    pub size: u64,
    /// Bearer token `/admin/purge` requires, inline.
    pub purge_token: Option<String>,
    /// Bearer token `/admin/purge` requires, from this file.
    pub purge_token_file: Option<PathBuf>,
    /// Show the cache key in `Cache-Status`.
    pub debug: bool,
}

/// What of the query string goes into a cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKey {
    /// As the client sent it.
    Keep,
    /// Parameters sorted (stable for equal names).
    Sort,
    /// Not at all.
    Ignore,
}

/// Caching on one route.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// Largest body stored.
    pub max_object_size: usize,
    /// Lower-case request header names added to the key.
    pub key_headers: Vec<String>,
    /// Cookie names added to the key.
    pub key_cookies: Vec<String>,
    /// Query string handling in the key.
    pub query: QueryKey,
    /// Lifetime of responses marked cacheable without one.
    pub default_ttl: Option<Duration>,
    /// Stale-while-revalidate when the origin sends none.
    pub stale_while_revalidate: Duration,
    /// Stale-if-error when the origin sends none.
    pub stale_if_error: Duration,
    /// Store responses with `Set-Cookie`.
    pub allow_set_cookie: bool,
    /// Wait on another request's fill at most this long.
    pub lock_timeout: Duration,
    /// A client's `Cache-Control: no-cache` forces revalidation.
    pub honor_client_no_cache: bool,
    /// Lower-case request header names `Vary` does not split on.
    pub vary_ignore: Vec<String>,
}

/// A rate-limit bucket definition: `burst` requests at once, refilled at
/// `rate` per `per` (GCRA).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Name filters refer to.
    pub name: String,
    /// Requests per window.
    pub rate: NonZeroU32,
    /// The window.
    pub per: Duration,
    /// Requests allowed at once.
    pub burst: NonZeroU32,
    /// Keys held at most.
    pub max_keys: usize,
}

/// A key set for host-side signature checks.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySet {
    /// Name filters refer to.
    pub name: String,
    /// JWKS document on disk.
    pub jwks_file: Option<PathBuf>,
    /// JWKS document fetched over HTTP(S).
    pub jwks_url: Option<String>,
    /// Refresh interval of `jwks_url`.
    pub refresh: Duration,
    /// HMAC secrets by key id, inline.
    pub hmac_secrets: BTreeMap<String, String>,
    /// HMAC secrets by key id, in files.
    pub hmac_secret_files: BTreeMap<String, PathBuf>,
}

/// Where a filter's component comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterSource {
    /// A first-party filter, by name, from the filter directory.
    Module(String),
    /// A tenant component file.
    Path(PathBuf),
}

/// What a failing filter (trap, timeout, memory cap, bad answer) means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The request fails with 503.
    FailClosed,
    /// The filter is skipped.
    FailOpen,
}

/// One filter on a route.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSpec {
    /// Name in logs and metrics (unique on its route).
    pub name: String,
    /// The component.
    pub source: FilterSource,
    /// Failure policy.
    pub on_error: OnError,
    /// CPU deadline per call.
    pub timeout: Duration,
    /// Linear memory cap, bytes.
    pub memory_bytes: usize,
    /// Buckets it may use (each defined in `rate_limits`).
    pub rate_limits: Vec<String>,
    /// Key sets it may use (each defined in `key_sets`).
    pub key_sets: Vec<String>,
    /// Its configuration as JSON text (inline part only; see `config_file`).
    pub config_json: String,
    /// A file whose keys are merged over `config_json` at load.
    pub config_file: Option<PathBuf>,
}

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Proxy worker threads.
    pub threads: NonZeroUsize,
    /// One work-stealing runtime (true) or one event loop per thread.
    pub work_stealing: bool,
    /// Time `/readyz` reports draining while traffic is still served.
    pub drain_window: Duration,
    /// Time in-flight requests get once listeners close.
    pub shutdown_timeout: Duration,
    /// Lower-case request-id header name.
    pub request_id_header: String,
    /// Accept h2c (prior knowledge) on plain listeners.
    pub h2c: bool,
    /// Answer plain fresh cache hits on HTTP/1.1 before Pingora's session.
    pub hit_lane: bool,
    /// Proxy plain HTTP/1.1 `GET`/`HEAD` requests on edgegate's own path.
    pub relay: bool,
    /// Reuse filter instances after a verified reset.
    pub filter_recycling: bool,
    /// Where first-party filters are installed.
    pub filter_dir: PathBuf,
    /// Where compiled filters are cached, if anywhere.
    pub filter_cache_dir: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// Line format.
    pub format: LogFormat,
    /// Whether each request is logged.
    pub access_log: bool,
    /// `tracing` filter directive.
    pub level: String,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Where it binds; never one of the public listeners' addresses.
    pub listen: SocketAddr,
}

/// A public listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Name for logs.
    pub name: String,
    /// Bound address.
    pub listen: SocketAddr,
    /// TLS settings; `None` for plain HTTP.
    pub tls: Option<Tls>,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Certificates, at least one; exactly one is the default.
    pub certificates: Vec<Certificate>,
    /// Offer h2 through ALPN.
    pub h2: bool,
}

/// One certificate chain and key on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Certificate {
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
    /// Served when SNI is absent or unknown.
    pub default: bool,
}

/// How a group picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
}

/// An upstream group.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Group name.
    pub name: String,
    /// `host:port` of each backend, at least one, no duplicates.
    pub backends: Vec<String>,
    /// Selection policy.
    pub load_balancing: LoadBalancing,
    /// TLS to backends with this SNI.
    pub tls_sni: Option<String>,
    /// Active health check.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection on connect errors.
    pub passive: PassiveHealth,
    /// Idle pooled connection lifetime.
    pub keepalive_timeout: Duration,
}

/// What an active health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// `GET path` with `Host: host`; a 2xx or 3xx answer passes.
    Http {
        /// Request path.
        path: String,
        /// Host header.
        host: String,
    },
    /// A TCP connect passes.
    Tcp,
}

/// An active health check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// What is checked.
    pub kind: HealthCheckKind,
    /// Between checks.
    pub interval: Duration,
    /// Passes in a row to mark up.
    pub healthy_threshold: NonZeroUsize,
    /// Failures in a row to mark down.
    pub unhealthy_threshold: NonZeroUsize,
    /// One check's timeout.
    pub timeout: Duration,
}

/// Passive health: eject backends that refuse connections.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveHealth {
    /// Connect errors in a row that eject.
    pub consecutive_failures: NonZeroU32,
    /// How long an ejected backend is skipped.
    pub eject_for: Duration,
}

/// Per-route upstream timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// Connect (TCP + TLS).
    pub connect: Duration,
    /// Each read, including waiting for the response head.
    pub read: Duration,
    /// Each write.
    pub write: Duration,
}

/// Per-route request size limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Request line plus headers, bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Request body, bytes (413 beyond).
    pub max_body_bytes: u64,
}
