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
//! | `GET /status`       | JSON: PoP, version, uptime, config generation, upstream health     |
//! | `GET /metrics`      | Prometheus text format                                             |
//! | `POST /admin/drain` | readyz fails at once, traffic still served, shutdown after window  |
//! | `POST /admin/reload`| same as `SIGHUP`: 200 with the new generation, or 409 + the error   |

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

    /// Answers one admin request (also used directly by tests).
    pub fn handle(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        let path = path.split('?').next().unwrap_or(path);
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
            (&Method::GET | &Method::HEAD, "/metrics") => {
                self.refresh_health_gauges();
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
                "/healthz" | "/readyz" | "/status" | "/metrics" | "/admin/drain" | "/admin/reload",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
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
        })
    }
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
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        // Reload reads files and resolves names: keep it off the async workers.
        if method == Method::POST && path == "/admin/reload" {
            let app = Self {
                shared: Arc::clone(&self.shared),
            };
            return tokio::task::spawn_blocking(move || app.handle(&method, &path))
                .await
                .unwrap_or_else(|_| {
                    text(StatusCode::INTERNAL_SERVER_ERROR, "reload task failed\n")
                });
        }
        self.handle(&method, &path)
    }
}
