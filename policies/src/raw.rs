//! The configuration as an operator writes it: serde types that mirror the
//! TOML file one to one.
//!
//! Every struct denies unknown keys (Pingora silently ignores them, which
//! hides typos such as `helth_check` until the day it matters). Values stay
//! loosely typed here (durations and sizes are strings); [`crate::validate`]
//! turns them into [`crate::Config`], whose types cannot hold invalid states.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Identity of this point of presence.
    #[serde(default)]
    pub pop: PopConfig,
    /// Process-wide settings: worker threads, drain window.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The admin listener (health, readiness, metrics, drain).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Public listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Upstream groups by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes; the most specific match wins, file order does not matter.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Rate-limit buckets by name (host-held GCRA state), granted to filters per route.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Key sets by name (for signature checks by the host), granted to filters per route.
    #[serde(default)]
    pub key_sets: BTreeMap<String, KeySetConfig>,
    /// The in-memory response cache shared by every route that enables it.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// `[cache]`: the process-wide store.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Total bytes held (bodies, headers and keys), e.g. `256MiB`. Default `256MiB`.
    /// Changing it on reload rebuilds the store, keeping what fits.
    pub size: Option<String>,
    /// Bearer token `/admin/purge` requires. Default: none (the admin listener
    /// is the only gate).
    pub purge_token: Option<String>,
    /// The same, read from a file (trailing newline dropped).
    pub purge_token_file: Option<String>,
    /// Add the `key` parameter to `Cache-Status` (shows the cache key to clients). Default false.
    pub debug: Option<bool>,
}

/// `[routes.cache]`: caching on one route.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// Cache on this route. Default true when the table is present.
    pub enabled: Option<bool>,
    /// Largest body stored; larger responses stream through uncached. Default `8MiB`.
    pub max_object_size: Option<String>,
    /// Request headers whose values are part of the key (beyond what `Vary` asks for).
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Cookies whose values are part of the key.
    #[serde(default)]
    pub key_cookies: Vec<String>,
    /// Query string in the key: `keep` (default, as sent), `sort` (parameters
    /// sorted, so `?b=1&a=2` and `?a=2&b=1` share an entry) or `ignore`.
    pub query: Option<String>,
    /// Lifetime for responses the origin marks cacheable (e.g. `public`) but
    /// gives no lifetime and no validator for heuristics. Default: none.
    pub default_ttl: Option<String>,
    /// Serve stale while revalidating in the background for this long when the
    /// origin sends no `stale-while-revalidate`. Default `0s`.
    pub stale_while_revalidate: Option<String>,
    /// Serve stale when the origin fails for this long when the origin sends
    /// no `stale-if-error`. Default `0s`.
    pub stale_if_error: Option<String>,
    /// Store responses that carry `Set-Cookie` (the cookie is then served to
    /// everyone). Default false.
    pub allow_set_cookie: Option<bool>,
    /// How long concurrent misses for one key wait for the first one's
    /// response before going to the origin themselves. Default `5s`.
    pub lock_timeout: Option<String>,
    /// Let a client's `Cache-Control: no-cache` force revalidation. Default
    /// false: anyone could otherwise make the PoP hammer the origin.
    pub honor_client_no_cache: Option<bool>,
    /// Request headers the cache does not split stored responses on even
    /// when the response's `Vary` names them, because a filter's cache-key
    /// part already captures what the response depends on (e.g. `accept`
    /// with the image filter's `format=auto`, whose key holds the negotiated
    /// format). `Vary` is still sent to clients. Default: none.
    #[serde(default)]
    pub vary_ignore: Vec<String>,
}

/// `[rate_limits.NAME]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per `per`.
    pub rate: u32,
    /// The window of `rate`. Default `1s`.
    pub per: Option<String>,
    /// Requests allowed at once. Default: `rate`.
    pub burst: Option<u32>,
    /// Keys held at most (least recently used forgotten beyond). Default 100000.
    pub max_keys: Option<usize>,
}

/// `[key_sets.NAME]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeySetConfig {
    /// A JWKS document on disk (RSA, EC P-256/P-384, Ed25519 and `oct` keys).
    pub jwks_file: Option<String>,
    /// A JWKS document fetched over HTTP(S), refreshed every `refresh`; the
    /// last good keys keep serving when a refresh fails.
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again. Default `5m`.
    pub refresh: Option<String>,
    /// HMAC secrets: `{ kid = "secret" }` inline.
    #[serde(default)]
    pub hmac_secrets: BTreeMap<String, String>,
    /// HMAC secrets read from files: `{ kid = "/path" }` (trailing newline dropped).
    #[serde(default)]
    pub hmac_secret_files: BTreeMap<String, String>,
}

/// `[[routes.filters]]`: one filter on a route, in order.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// A first-party filter shipped with edgegate (`headers`, `rate-limit`, `api-key`, `noop`).
    pub module: Option<String>,
    /// A tenant filter: path to a component (`.wasm`), relative to the config file.
    pub path: Option<String>,
    /// Name in logs and metrics. Default: the module name or file stem.
    pub name: Option<String>,
    /// `fail-closed` (default: the request gets 503) or `fail-open` (the filter is skipped).
    pub on_error: Option<String>,
    /// CPU deadline per call. Default `20ms`.
    pub timeout: Option<String>,
    /// Linear memory cap. Default `16MiB`.
    pub memory: Option<String>,
    /// Rate-limit buckets this filter may use.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// Key sets this filter may use.
    #[serde(default)]
    pub key_sets: Vec<String>,
    /// The filter's own configuration, handed to it as JSON.
    pub config: Option<toml::Table>,
    /// More configuration from a file (`.toml` or `.json`, relative to the
    /// config file), merged over `config` key by key; re-read on reload and
    /// when it changes (e.g. API keys kept apart from the main config).
    pub config_file: Option<String>,
}

/// `[pop]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PopConfig {
    /// Name of this PoP, used in `Via` and in `/status`. Default: the host name.
    pub name: Option<String>,
}

/// `[server]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads for the proxy. Default: number of CPUs.
    pub threads: Option<usize>,
    /// Let idle worker threads steal queued tasks from busy ones (one
    /// shared work-stealing runtime) instead of one event loop per thread
    /// with connections spread across them. Default false.
    pub work_stealing: Option<bool>,
    /// How long `/readyz` reports draining while traffic is still served,
    /// before graceful shutdown starts. Default `10s`.
    pub drain_window: Option<String>,
    /// How long in-flight requests get to finish once listeners close.
    /// Default `10s`.
    pub shutdown_timeout: Option<String>,
    /// Name of the request-id header. Default `x-request-id`.
    pub request_id_header: Option<String>,
    /// Accept HTTP/2 cleartext (prior knowledge) on plain listeners. Default false.
    pub h2c: Option<bool>,
    /// Answer plain fresh cache hits on HTTP/1.1 connections before
    /// Pingora parses the request (the hit lane). Default true.
    pub hit_lane: Option<bool>,
    /// Proxy plain HTTP/1.1 `GET`/`HEAD` requests on routes without
    /// filters or caching on edgegate's own path (the relay). Default true.
    pub relay: Option<bool>,
    /// Reuse filter instances after a reset that edgegate builds into each
    /// component and verifies (fresh instances when a component cannot get
    /// one). Default true.
    pub filter_recycling: Option<bool>,
    /// Where first-party filter components are installed. Default
    /// `/usr/lib/edgegate/filters` (the `EDGEGATE_FILTER_DIR` environment variable overrides).
    pub filter_dir: Option<String>,
    /// Where compiled filters are cached. Default `/var/cache/edgegate` (none when unset and not writable).
    pub filter_cache_dir: Option<String>,
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` for internal logs and the access log.
    pub format: Option<String>,
    /// Access log on or off. Default on.
    pub access_log: Option<bool>,
    /// `tracing` filter directive, e.g. `info` or `edgegate=debug`. Default `info`.
    pub level: Option<String>,
}

/// `[admin]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener. Default `127.0.0.1:9901`.
    pub listen: Option<String>,
}

/// `[[listeners]]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in logs and metrics. Default: the address.
    pub name: Option<String>,
    /// `host:port` to bind.
    pub listen: String,
    /// Present for a TLS listener.
    pub tls: Option<TlsConfig>,
}

/// `[listeners.tls]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates; the one whose names match the client's SNI is served.
    pub certificates: Vec<CertificateConfig>,
    /// Serve HTTP/2 via ALPN. Default true.
    pub h2: Option<bool>,
}

/// One certificate chain and its key, both PEM files.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Use this one when the client sends no SNI or an unknown name. At most
    /// one per listener; default: the first.
    pub default: Option<bool>,
}

/// `[upstreams.NAME]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of each backend.
    pub backends: Vec<String>,
    /// `round_robin` (default) or `random`.
    pub load_balancing: Option<String>,
    /// Connect to backends over TLS with this SNI.
    pub tls_sni: Option<String>,
    /// Active health check.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive health: eject a backend after connect errors.
    pub passive: Option<PassiveHealthConfig>,
    /// How long an idle keep-alive connection to a backend stays pooled. Default `60s`.
    pub keepalive_timeout: Option<String>,
}

/// `[upstreams.NAME.health_check]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http` (default when `path` is set) or `tcp`.
    pub kind: Option<String>,
    /// Path requested by an `http` check. Default `/`.
    pub path: Option<String>,
    /// Host header of an `http` check. Default `localhost`.
    pub host: Option<String>,
    /// Time between checks. Default `5s`.
    pub interval: Option<String>,
    /// Checks in a row that must pass to mark a backend up. Default 1.
    pub healthy_threshold: Option<usize>,
    /// Checks in a row that must fail to mark a backend down. Default 1.
    pub unhealthy_threshold: Option<usize>,
    /// Timeout of one check. Default `1s`.
    pub timeout: Option<String>,
}

/// `[upstreams.NAME.passive]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthConfig {
    /// Connect errors in a row that eject a backend. Default 1.
    pub consecutive_failures: Option<u32>,
    /// How long an ejected backend is skipped. Default `10s`.
    pub eject_for: Option<String>,
}

/// `[[routes]]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Exact host (`api.example.com`), wildcard (`*.example.com`) or absent for any host.
    pub host: Option<String>,
    /// Match paths starting with this (segment-wise: `/api` matches `/api/x`, not `/apix`).
    pub path_prefix: Option<String>,
    /// Match exactly this path.
    pub path_exact: Option<String>,
    /// Upstream group name.
    pub upstream: String,
    /// Send the client's Host header upstream. Default true.
    pub preserve_host: Option<bool>,
    /// Extra attempts on other backends for idempotent requests. Default 1.
    pub retries: Option<u32>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Size limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Filters, run in this order on requests (reverse order on responses).
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    /// Response caching on this route (off when absent).
    pub cache: Option<RouteCacheConfig>,
}

/// `[routes.timeouts]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP (and TLS) connect to a backend. Default `2s`.
    pub connect: Option<String>,
    /// Waiting for each read from the backend (incl. response head). Default `30s`.
    pub read: Option<String>,
    /// Each write to the backend. Default `30s`.
    pub write: Option<String>,
}

/// `[routes.limits]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Total size of the request line and headers, e.g. `16KiB`. Default `32KiB`; larger gets 431.
    pub max_header_bytes: Option<String>,
    /// Request body size, e.g. `10MiB`. Default `16MiB`; larger gets 413.
    pub max_body_bytes: Option<String>,
}
