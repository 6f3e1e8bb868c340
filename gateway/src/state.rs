//! Config loading, generations and reload.
//!
//! The serving state is an immutable [`Generation`] behind an `ArcSwap`.
//! Requests pin the generation they started with; a reload builds a complete
//! new generation beside the old one (config validated, backends resolved,
//! certificates loaded) and swaps it in with one pointer store, so nothing
//! in flight sees a half-applied config and a bad config changes nothing.

use crate::metrics::Metrics;
use crate::tls::{CertStore, SniResolver};
use crate::upstream::UpstreamGroup;
use arc_swap::ArcSwap;
use policies::{Config, ConfigError, Defaults, RawConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::sync::watch;

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A TOML file, re-read on reload.
    File(PathBuf),
    /// Built in code (command-line flags, the demo); reload re-validates it.
    Inline {
        /// The config.
        raw: Box<RawConfig>,
        /// Named in errors instead of a file.
        origin: String,
    },
}

/// Why a config could not be loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Invalid config.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A backend does not resolve.
    #[error("{0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// Certificates unusable.
    #[error("listener `{listener}`: {source}")]
    Tls {
        /// Listener name.
        listener: String,
        /// Why.
        source: crate::tls::TlsError,
    },
    /// A filter or key set failed to load.
    #[error("{0}")]
    Filter(#[from] crate::filter_host::FilterLoadError),
    /// Listener set changed: needs a restart.
    #[error(
        "listeners changed ({0}); they are bound at start, restart edgegate to apply this change"
    )]
    ListenersChanged(String),
    /// The purge token file cannot be read.
    #[error("cache.purge_token_file `{path}`: {source}")]
    PurgeToken {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One complete, immutable serving state.
pub struct Generation {
    /// Increases by one with every applied reload, from 1.
    pub id: u64,
    /// The validated config.
    pub config: Arc<Config>,
    /// Upstream groups by name.
    pub upstreams: HashMap<String, Arc<UpstreamGroup>>,
    /// The upstream group of each route, by [`policies::RouteId`].
    pub route_upstreams: Vec<Arc<UpstreamGroup>>,
    /// Metric handles of each route, by [`policies::RouteId`].
    pub route_metrics: Vec<crate::metrics::RouteMetrics>,
    /// Values computed once per generation for the request path.
    pub hot: HotValues,
    /// Filter engine handle, rate-limit buckets and key sets.
    pub filters: crate::filter_host::FilterSet,
    /// The filter chain of each route, by [`policies::RouteId`].
    pub route_filters: Vec<crate::filter_host::FilterChain>,
    /// Files this generation was built from (components, certificates, key
    /// files) with their modification times then: a change triggers a reload.
    pub watched: Vec<(PathBuf, Option<SystemTime>)>,
    /// When it was applied.
    pub loaded_at: SystemTime,
    /// The bearer token `/admin/purge` requires, if any.
    pub purge_token: Option<String>,
}

/// Header names and values the request path would otherwise rebuild per request.
pub struct HotValues {
    /// The request-id header.
    pub request_id_header: http::HeaderName,
    /// `Via` hop for HTTP/1.1 (`1.1 <pop>`).
    pub via_h1: http::HeaderValue,
    /// `Via` hop for HTTP/2 (`2 <pop>`).
    pub via_h2: http::HeaderValue,
    /// Whether the hit lane (`proxy::lane`) can answer anything: it is on
    /// and some route caches without filters. When not, connections go
    /// straight to Pingora and pay nothing for the lane.
    pub hit_lane: bool,
    /// Whether the relay (`proxy::relay`) can take anything: it is on and
    /// some route has neither filters nor caching.
    pub relay: bool,
}

impl HotValues {
    fn new(config: &Config) -> Result<Self, LoadError> {
        let invalid = |what: &str| {
            LoadError::Config(ConfigError {
                file: PathBuf::new(),
                location: None,
                key: what.to_string(),
                message: "not usable in an HTTP header".into(),
            })
        };
        Ok(Self {
            request_id_header: http::HeaderName::from_bytes(
                config.server.request_id_header.as_bytes(),
            )
            .map_err(|_| invalid("server.request_id_header"))?,
            via_h1: http::HeaderValue::from_str(&format!("1.1 {}", config.pop_name))
                .map_err(|_| invalid("pop.name"))?,
            via_h2: http::HeaderValue::from_str(&format!("2 {}", config.pop_name))
                .map_err(|_| invalid("pop.name"))?,
            hit_lane: config.server.hit_lane
                && config
                    .routes
                    .routes()
                    .iter()
                    .any(|r| r.cache.is_some() && r.filters.is_empty()),
            relay: config.server.relay
                && config
                    .routes
                    .routes()
                    .iter()
                    .any(|r| r.cache.is_none() && r.filters.is_empty()),
        })
    }
}

/// Readiness verdict for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    /// Whether traffic should come here now.
    pub ready: bool,
    /// Why not, one line each.
    pub reasons: Vec<String>,
}

/// State shared by the proxy, admin and background services for the life of
/// the process.
pub struct Shared {
    current: ArcSwap<Generation>,
    source: ConfigSource,
    defaults: Defaults,
    /// Metrics registry.
    pub metrics: Metrics,
    /// The response cache (outlives generations).
    pub cache: crate::cache::Cache,
    /// TLS resolvers by listener name (fixed at start; contents reload).
    pub tls: Vec<(String, Arc<SniResolver>)>,
    draining: AtomicBool,
    /// Every public listener has been seen accepting (checked until true).
    listeners_up: AtomicBool,
    drain_tx: watch::Sender<bool>,
    started: Instant,
    reload_lock: Mutex<()>,
    last_reload_error: Mutex<Option<String>>,
}

fn build_generation(
    id: u64,
    config: Config,
    previous: Option<&Generation>,
    metrics: &Metrics,
) -> Result<Generation, LoadError> {
    let mut upstreams = HashMap::new();
    for (name, up) in &config.upstreams {
        // Keep an unchanged group: its health state and pool survive.
        let reused = previous
            .and_then(|p| p.upstreams.get(name))
            .filter(|g| g.config == *up)
            .cloned();
        let group = match reused {
            Some(g) => g,
            None => Arc::new(UpstreamGroup::new(up)?),
        };
        upstreams.insert(name.clone(), group);
    }
    let route_upstreams = config
        .routes
        .routes()
        .iter()
        .map(|r| {
            upstreams.get(&r.upstream).cloned().ok_or_else(|| {
                LoadError::Config(ConfigError {
                    file: PathBuf::new(),
                    location: None,
                    key: format!("routes.{}.upstream", r.name),
                    message: format!("no upstream group named `{}`", r.upstream),
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let route_metrics = config
        .routes
        .routes()
        .iter()
        .map(|r| metrics.route(&r.name))
        .collect();
    let hot = HotValues::new(&config)?;
    let filters = crate::filter_host::FilterSet::new(&config, previous.map(|p| &p.filters))?;
    let route_filters = config
        .routes
        .routes()
        .iter()
        .map(|r| filters.chain(r, &config))
        .collect::<Result<Vec<_>, _>>()?;
    let watched = watched_files(&config)
        .into_iter()
        .map(|p| {
            let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, mtime)
        })
        .collect();
    let purge_token = match (&config.cache.purge_token, &config.cache.purge_token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::PurgeToken {
                path: path.clone(),
                source,
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_string())
        }
        (None, None) => None,
    };
    Ok(Generation {
        id,
        purge_token,
        watched,
        config: Arc::new(config),
        upstreams,
        route_upstreams,
        route_metrics,
        hot,
        filters,
        route_filters,
        loaded_at: SystemTime::now(),
    })
}

/// Every file a config reads besides itself.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            for c in &tls.certificates {
                files.push(c.cert.clone());
                files.push(c.key.clone());
            }
        }
    }
    for r in config.routes.routes() {
        for f in &r.filters {
            files.extend(f.config_file.iter().cloned());
            match &f.source {
                policies::FilterSource::Path(p) => files.push(p.clone()),
                policies::FilterSource::Module(m) => files.push(
                    config
                        .server
                        .filter_dir
                        .join(format!("{}.wasm", m.replace('-', "_"))),
                ),
            }
        }
    }
    files.extend(config.cache.purge_token_file.iter().cloned());
    for k in config.key_sets.values() {
        files.extend(k.jwks_file.iter().cloned());
        files.extend(k.hmac_secret_files.values().cloned());
    }
    files.sort();
    files.dedup();
    files
}

impl Generation {
    /// The modification times of its watched files now, when any differs
    /// from what it was built from.
    pub fn changed_files(&self) -> Option<Vec<Option<SystemTime>>> {
        let now: Vec<Option<SystemTime>> = self
            .watched
            .iter()
            .map(|(p, _)| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect();
        let changed = now
            .iter()
            .zip(&self.watched)
            .any(|(n, (_, then))| n != then);
        changed.then_some(now)
    }
}

fn load_stores(config: &Config) -> Result<Vec<(String, CertStore)>, LoadError> {
    config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|t| (l, t)))
        .map(|(l, t)| {
            CertStore::load(&t.certificates)
                .map(|s| (l.name.clone(), s))
                .map_err(|source| LoadError::Tls {
                    listener: l.name.clone(),
                    source,
                })
        })
        .collect()
}

impl Shared {
    /// Loads the config for the first time.
    pub fn load(source: ConfigSource, defaults: Defaults) -> anyhow::Result<Arc<Self>> {
        let config = read_config(&source, &defaults)?;
        let stores = load_stores(&config)?;
        let metrics = Metrics::new()?;
        let generation = build_generation(1, config, None, &metrics)?;
        metrics.config_generation.set(1);
        let cache = crate::cache::Cache::new(generation.config.cache.size);
        let tls = stores
            .into_iter()
            .map(|(name, store)| (name, Arc::new(SniResolver::new(store))))
            .collect();
        let (drain_tx, _) = watch::channel(false);
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(generation),
            source,
            defaults,
            metrics,
            cache,
            tls,
            draining: AtomicBool::new(false),
            listeners_up: AtomicBool::new(false),
            drain_tx,
            started: Instant::now(),
            reload_lock: Mutex::new(()),
            last_reload_error: Mutex::new(None),
        }))
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Re-reads the config and applies it, or leaves everything as it was.
    /// Returns the new generation id.
    pub fn reload(&self) -> Result<u64, LoadError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.try_reload();
        let mut last = self
            .last_reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(id) => {
                *last = None;
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                self.metrics.config_generation.set(*id as i64);
                tracing::info!(generation = id, "config reloaded");
            }
            Err(e) => {
                *last = Some(e.to_string());
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "config reload rejected; the previous config keeps serving");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<u64, LoadError> {
        let old = self.current();
        let config = read_config(&self.source, &self.defaults)?;
        let shape = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| (l.name.clone(), l.listen, l.tls.as_ref().map(|t| t.h2)))
                .collect::<Vec<_>>()
        };
        if shape(&config) != shape(&old.config) || config.admin != old.config.admin {
            return Err(LoadError::ListenersChanged(
                "addresses, names, TLS or the admin address".into(),
            ));
        }
        if config.server.threads != old.config.server.threads
            || config.server.work_stealing != old.config.server.work_stealing
        {
            tracing::warn!(
                "server.threads and server.work_stealing changes apply at the next restart"
            );
        }
        let stores = load_stores(&config)?;
        let generation = build_generation(old.id + 1, config, Some(&old), &self.metrics)?;
        let id = generation.id;
        // Everything is built: now publish, certificates first.
        for (name, store) in stores {
            if let Some((_, resolver)) = self.tls.iter().find(|(n, _)| *n == name) {
                resolver.replace(store);
            }
        }
        self.cache.store.resize(generation.config.cache.size);
        self.current.store(Arc::new(generation));
        Ok(id)
    }

    /// The last reload's error, if it failed.
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts draining: `/readyz` fails from now on; shutdown follows after
    /// the drain window (driven by the server's shutdown watcher).
    pub fn start_drain(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            self.metrics.draining.set(1);
            tracing::warn!(
                window = ?self.current().config.server.drain_window,
                "draining: readyz now fails, traffic is still served until shutdown"
            );
        }
        let _ = self.drain_tx.send(true);
    }

    /// Whether the node drains.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once a drain was requested.
    pub fn drain_requested(&self) -> watch::Receiver<bool> {
        self.drain_tx.subscribe()
    }

    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Should traffic come here now?
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("draining".to_string());
        }
        let generation = self.current();
        if !self.listeners_up.load(Ordering::Relaxed) {
            let addrs: Vec<_> = generation
                .config
                .listeners
                .iter()
                .map(|l| l.listen)
                .collect();
            match crate::listening::first_not_listening(&addrs) {
                None => self.listeners_up.store(true, Ordering::Relaxed),
                Some(a) => reasons.push(format!("listener {a}: not accepting connections yet")),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (route, group) in generation
            .config
            .routes
            .routes()
            .iter()
            .zip(&generation.route_upstreams)
        {
            if !seen.insert(group.config.name.clone()) {
                continue;
            }
            if !group.first_check_done() {
                reasons.push(format!(
                    "upstream `{}` (route `{}`): first health check pending",
                    group.config.name, route.name
                ));
            } else if !group.any_healthy() {
                reasons.push(format!(
                    "upstream `{}` (route `{}`): no healthy backend",
                    group.config.name, route.name
                ));
            }
        }
        for set in generation.filters.keys.unavailable() {
            reasons.push(format!("key set `{set}`: JWKS not fetched yet"));
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
        }
    }
}

/// Reads and validates the config from `source`.
pub fn read_config(source: &ConfigSource, defaults: &Defaults) -> Result<Config, ConfigError> {
    match source {
        ConfigSource::File(path) => policies::load_file(path, defaults),
        ConfigSource::Inline { raw, origin } => policies::from_raw(raw, origin, defaults),
    }
}

/// Machine defaults: CPU count and host name.
pub fn machine_defaults() -> Defaults {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pop_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .unwrap_or_else(|| "edgegate".to_string());
    Defaults { threads, pop_name }
}
