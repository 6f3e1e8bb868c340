//! The admin listener: health, readiness, status, metrics, drain and reload.
//!
//! It binds its own (unicast) address, never a public listener's, so a BGP
//! speaker's health check and Prometheus reach it while the anycast
//! listeners only carry traffic.
//!
//! | endpoint            | answer                                                             |
//! |---------------------|--------------------------------------------------------------------|
//! | `GET /healthz`      | 200 while the process serves (liveness)                            |
//! | `GET /readyz`       | 200 when traffic should come here, else 503 + JSON reasons         |
//! | `GET /status`       | JSON: PoP, version, uptime, config generation, upstream health, cache |
//! | `GET /metrics`      | Prometheus text format                                             |
//! | `POST /admin/drain` | readyz fails at once, traffic still served, shutdown after window  |
//! | `POST /admin/reload`| same as `SIGHUP`: 200 with the new generation, or 409 + the error   |
//! | `POST /admin/purge` | cache purge: `?url=`, `?host=&prefix=` or `?tag=`; `&soft=1` marks stale |
//!
//! Purges need `Authorization: Bearer <cache.purge_token>` when a token is
//! configured. A URL purge removes every variant stored for the URL (all
//! `Vary` variants, both schemes, every key header value); a soft purge
//! keeps the objects but marks them stale, so they revalidate and can still
//! be served under `stale-if-error`.

use crate::state::Shared;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

/// The admin HTTP application.
pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    /// Serves `shared`'s state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Answers one admin request.
    pub fn handle(
        &self,
        method: &Method,
        path_and_query: &str,
        authorization: Option<&str>,
    ) -> Response<Vec<u8>> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        match (method, path) {
            (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET | &Method::HEAD, "/readyz") => {
                let r = self.shared.readiness();
                let status = if r.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let g = self.shared.current();
                json_response(
                    status,
                    json!({
                        "ready": r.ready,
                        "reasons": r.reasons,
                        "pop": g.config.pop_name,
                        "config_generation": g.id,
                        "draining": self.shared.is_draining(),
                    }),
                )
            }
            (&Method::GET | &Method::HEAD, "/status") => {
                json_response(StatusCode::OK, self.status())
            }
            (&Method::POST, "/admin/purge") => self.purge(query, authorization),
            (&Method::GET | &Method::HEAD, "/metrics") => {
                self.refresh_health_gauges();
                self.shared.cache.refresh_metrics(&self.shared.metrics);
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(self.shared.metrics.render())
                    .unwrap_or_else(|_| Response::new(Vec::new()))
            }
            (&Method::POST, "/admin/drain") => {
                self.shared.start_drain();
                let window = self.shared.current().config.server.drain_window;
                json_response(
                    StatusCode::ACCEPTED,
                    json!({"draining": true, "shutdown_after_seconds": window.as_secs_f64()}),
                )
            }
            (&Method::POST, "/admin/reload") => match self.shared.reload() {
                Ok(generation) => {
                    json_response(StatusCode::OK, json!({"config_generation": generation}))
                }
                Err(e) => json_response(
                    StatusCode::CONFLICT,
                    json!({"error": e.to_string(), "config_generation": self.shared.current().id}),
                ),
            },
            (
                _,
                "/healthz" | "/readyz" | "/status" | "/metrics" | "/admin/drain" | "/admin/reload"
                | "/admin/purge",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn purge(&self, query: &str, authorization: Option<&str>) -> Response<Vec<u8>> {
        let g = self.shared.current();
        if let Some(token) = &g.purge_token {
            let given = authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or_default();
            if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                return json_response(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "purge needs `Authorization: Bearer <cache.purge_token>`"}),
                );
            }
        }
        let mut url = None;
        let mut host = None;
        let mut prefix = None;
        let mut tags = Vec::new();
        let mut soft = false;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "url" => url = Some(v.into_owned()),
                "host" => host = Some(v.into_owned()),
                "prefix" => prefix = Some(v.into_owned()),
                "tag" => tags.push(v.into_owned()),
                "soft" => soft = matches!(&*v, "1" | "true" | "yes"),
                other => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("unknown parameter `{other}` (url, host, prefix, tag, soft)")}),
                    )
                }
            }
        }
        let store = self.shared.cache.store;
        let metrics = &self.shared.metrics;
        let count = |kind: &str, n: u64| {
            metrics.cache_purges.with_label_values(&[kind]).inc();
            metrics
                .cache_purged_objects
                .with_label_values(&[kind])
                .inc_by(n);
            n
        };
        let purged = match (url, host, prefix, tags.is_empty()) {
            (Some(u), None, None, true) => {
                let Ok(uri) = u.parse::<http::Uri>() else {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("`{u}` is not a URL")}),
                    );
                };
                let Some(h) = uri.host() else {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "`url` needs a host: http://HOST/PATH"}),
                    );
                };
                let h = policies::route::normalize_host(h);
                let routes = &g.config.routes;
                let query_mode = routes
                    .find(&h, uri.path())
                    .and_then(|id| routes.get(id))
                    .and_then(|r| r.cache.as_ref())
                    .map_or(policies::QueryKey::Keep, |p| p.query);
                let id = crate::cache::key::url_identity(&h, uri.path(), uri.query(), query_mode);
                count("url", store.purge_url(&id, soft))
            }
            (None, Some(h), prefix, true) => {
                let p = prefix.unwrap_or_else(|| "/".into());
                if !p.starts_with('/') {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "`prefix` must start with `/`"}),
                    );
                }
                let mut id = policies::route::normalize_host(&h)
                    .into_owned()
                    .into_bytes();
                id.push(b'\n');
                id.extend_from_slice(p.as_bytes());
                count("prefix", store.purge_prefix(&id, soft))
            }
            (None, None, None, false) => {
                let n = tags.iter().map(|t| store.purge_tag(t, soft)).sum();
                count("tag", n)
            }
            _ => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "give one of `url`, `host` (with optional `prefix`) or `tag`"}),
                )
            }
        };
        json_response(StatusCode::OK, json!({"purged": purged, "soft": soft}))
    }

    fn cache_status(&self) -> serde_json::Value {
        let store = self.shared.cache.store;
        let (bytes, objects) = store.usage();
        let counters = store.counters();
        json!({
            "capacity_bytes": store.size(),
            "bytes": bytes,
            "objects": objects,
            "evictions": counters.evictions.load(std::sync::atomic::Ordering::Relaxed),
            "routes": self.shared.current().config.routes.routes().iter()
                .filter(|r| r.cache.is_some())
                .map(|r| r.name.clone())
                .collect::<Vec<_>>(),
        })
    }

    fn refresh_health_gauges(&self) {
        let g = self.shared.current();
        self.shared.metrics.backend_healthy.reset();
        for (name, group) in &g.upstreams {
            for h in group.health() {
                self.shared
                    .metrics
                    .backend_healthy
                    .with_label_values(&[name.as_str(), h.backend.as_str()])
                    .set(i64::from(h.healthy()));
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        let g = self.shared.current();
        let upstreams: serde_json::Map<String, serde_json::Value> = g
            .upstreams
            .iter()
            .map(|(name, group)| (name.clone(), json!(group.health())))
            .collect();
        let loaded_at = g
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let tls: serde_json::Map<String, serde_json::Value> = self
            .shared
            .tls
            .iter()
            .map(|(name, r)| (name.clone(), json!(r.names())))
            .collect();
        json!({
            "pop": g.config.pop_name,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.shared.uptime().as_secs(),
            "config_generation": g.id,
            "config_loaded_at_unix": loaded_at,
            "last_reload_error": self.shared.last_reload_error(),
            "draining": self.shared.is_draining(),
            "ready": self.shared.readiness(),
            "listeners": g.config.listeners.iter().map(|l| json!({
                "name": l.name, "listen": l.listen.to_string(), "tls": l.tls.is_some()
            })).collect::<Vec<_>>(),
            "tls_names": tls,
            "routes": g.config.routes.routes().iter().map(|r| json!({
                "name": r.name, "upstream": r.upstream
            })).collect::<Vec<_>>(),
            "upstreams": upstreams,
            "cache": self.cache_status(),
        })
    }
}

/// Compares without an early exit (a token check must not leak by timing).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "no-store")
        .body(body.as_bytes().to_vec())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string());
        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Reload reads files and purges walk the store: keep both off the async workers.
        if method == Method::POST && (path == "/admin/reload" || path.starts_with("/admin/purge")) {
            let app = Self {
                shared: Arc::clone(&self.shared),
            };
            return tokio::task::spawn_blocking(move || {
                app.handle(&method, &path, authorization.as_deref())
            })
            .await
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "reload task failed\n"));
        }
        self.handle(&method, &path, authorization.as_deref())
    }
}
