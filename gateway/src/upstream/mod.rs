//! Upstream groups: backend selection, active and passive health.
//!
//! Selection and active health checks are `pingora-load-balancing`'s
//! (`LoadBalancer` with `RoundRobin`/`Random`, `HttpHealthCheck` /
//! `TcpHealthCheck` with consecutive thresholds). What it lacks and we add:
//! passive ejection after connect errors, skipping backends a request already
//! tried (failover), and a panic mode: when no backend looks healthy we still
//! try them rather than fail every request on a possibly wrong health signal
//! (Envoy's "panic threshold" at 0%).
//!
//! A group is kept across config reloads when its config is unchanged, so
//! health state and pooled connections survive `SIGHUP`.

use pingora::http::RequestHeader;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use policies::{HealthCheckKind, LoadBalancing, Upstream};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a group could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A backend name did not resolve.
    #[error("upstream `{group}`: backend `{backend}` does not resolve: {reason}")]
    Resolve {
        /// Group name.
        group: String,
        /// Backend as written.
        backend: String,
        /// Resolver's answer.
        reason: String,
    },
    /// Health-check request could not be built.
    #[error("upstream `{group}`: invalid health check request: {reason}")]
    HealthCheck {
        /// Group name.
        group: String,
        /// Why.
        reason: String,
    },
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
}

impl Balancer {
    fn select_with(&self, accept: impl Fn(&Backend, bool) -> bool, max: usize) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(b"", max, accept),
            Balancer::Random(lb) => lb.select_with(b"", max, accept),
        }
    }

    fn ready(&self, b: &Backend) -> bool {
        match self {
            Balancer::RoundRobin(lb) => lb.backends().ready(b),
            Balancer::Random(lb) => lb.backends().ready(b),
        }
    }

    async fn run_health_check(&self) {
        match self {
            Balancer::RoundRobin(lb) => lb.backends().run_health_check(true).await,
            Balancer::Random(lb) => lb.backends().run_health_check(true).await,
        }
    }
}

/// Passive health of one backend.
#[derive(Debug)]
pub struct BackendState {
    /// Resolved address.
    pub addr: SocketAddr,
    /// As written in the config (for logs and metrics).
    pub label: String,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the group's epoch until which the backend is ejected.
    ejected_until_ms: AtomicU64,
}

/// A health snapshot of one backend, for `/readyz`, `/status` and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendHealth {
    /// As written in the config.
    pub backend: String,
    /// Active health check says up (always true without a check).
    pub active_healthy: bool,
    /// Currently ejected after connect errors.
    pub ejected: bool,
}

impl BackendHealth {
    /// Eligible for traffic.
    pub fn healthy(&self) -> bool {
        self.active_healthy && !self.ejected
    }
}

/// An upstream group ready to serve.
pub struct UpstreamGroup {
    /// The validated config it was built from.
    pub config: Upstream,
    balancer: Balancer,
    backends: Vec<BackendState>,
    epoch: Instant,
    next_check_ms: AtomicU64,
    checking: AtomicBool,
    checked_once: AtomicBool,
}

impl std::fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamGroup")
            .field("name", &self.config.name)
            .finish()
    }
}

impl UpstreamGroup {
    /// Resolves backends (blocking DNS, at config load only) and sets up
    /// health checks. Nothing is checked yet: backends start healthy.
    pub fn new(config: &Upstream) -> Result<Self, UpstreamError> {
        let mut backends = Vec::new();
        for b in &config.backends {
            let addr = b
                .to_socket_addrs()
                .map_err(|e| e.to_string())
                .and_then(|mut it| it.next().ok_or_else(|| "no address".to_string()))
                .map_err(|reason| UpstreamError::Resolve {
                    group: config.name.clone(),
                    backend: b.clone(),
                    reason,
                })?;
            backends.push(BackendState {
                addr,
                label: b.clone(),
                consecutive_failures: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
            });
        }
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let resolve_err = |e: std::io::Error| UpstreamError::Resolve {
            group: config.name.clone(),
            backend: config.backends.join(","),
            reason: e.to_string(),
        };
        let mut balancer = match config.load_balancing {
            LoadBalancing::RoundRobin => {
                Balancer::RoundRobin(LoadBalancer::try_from_iter(addrs).map_err(resolve_err)?)
            }
            LoadBalancing::Random => {
                Balancer::Random(LoadBalancer::try_from_iter(addrs).map_err(resolve_err)?)
            }
        };
        if let Some(hc) = &config.health_check {
            let check: Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync> =
                match &hc.kind {
                    HealthCheckKind::Http { path, host } => {
                        let tls = config.tls_sni.is_some();
                        let mut check = HttpHealthCheck::new(host, tls);
                        if let Some(sni) = &config.tls_sni {
                            check.peer_template.sni = sni.clone();
                        }
                        let mut req =
                            RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| {
                                UpstreamError::HealthCheck {
                                    group: config.name.clone(),
                                    reason: e.to_string(),
                                }
                            })?;
                        req.insert_header("Host", host.as_str())
                            .and_then(|_| req.insert_header("User-Agent", "edgegate-health-check"))
                            .map_err(|e| UpstreamError::HealthCheck {
                                group: config.name.clone(),
                                reason: e.to_string(),
                            })?;
                        check.req = req;
                        check.consecutive_success = hc.healthy_threshold.get();
                        check.consecutive_failure = hc.unhealthy_threshold.get();
                        check.peer_template.options.connection_timeout = Some(hc.timeout);
                        check.peer_template.options.read_timeout = Some(hc.timeout);
                        check.peer_template.options.write_timeout = Some(hc.timeout);
                        // 2xx and 3xx pass: a redirecting health endpoint is alive.
                        check.validator = Some(Box::new(|resp| {
                            if resp.status.is_success() || resp.status.is_redirection() {
                                Ok(())
                            } else {
                                pingora::Error::e_explain(
                                    pingora::ErrorType::CustomCode(
                                        "health check status",
                                        resp.status.as_u16(),
                                    ),
                                    "health check answered with an error status",
                                )
                            }
                        }));
                        Box::new(check)
                    }
                    HealthCheckKind::Tcp => {
                        let mut check = TcpHealthCheck::new();
                        check.consecutive_success = hc.healthy_threshold.get();
                        check.consecutive_failure = hc.unhealthy_threshold.get();
                        check.peer_template.options.connection_timeout = Some(hc.timeout);
                        check
                    }
                };
            match &mut balancer {
                Balancer::RoundRobin(lb) => lb.set_health_check(check),
                Balancer::Random(lb) => lb.set_health_check(check),
            }
        }
        Ok(Self {
            config: config.clone(),
            balancer,
            backends,
            epoch: Instant::now(),
            next_check_ms: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            checked_once: AtomicBool::new(config.health_check.is_none()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn index_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.backends.iter().position(|b| b.addr == *addr)
    }

    /// The backends, in config order.
    pub fn backends(&self) -> &[BackendState] {
        &self.backends
    }

    fn ejected(&self, i: usize, now: u64) -> bool {
        self.backends[i].ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Picks a backend not in `tried` (indices): a healthy one when there is
    /// one, else any untried one (panic mode). `None` when all were tried.
    pub fn select(&self, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let n = self.backends.len();
        let eligible = |b: &Backend, healthy: bool| {
            let Some(i) = b.addr.as_inet().and_then(|a| self.index_of(a)) else {
                return false;
            };
            healthy && !self.ejected(i, now) && !tried.contains(&i)
        };
        if let Some(b) = self.balancer.select_with(eligible, n * 2) {
            return b.addr.as_inet().and_then(|a| self.index_of(a));
        }
        // Panic mode: nothing looks healthy; try what was not tried yet,
        // preferring backends that are not ejected.
        (0..n)
            .filter(|i| !tried.contains(i))
            .min_by_key(|i| self.ejected(*i, now))
    }

    /// Builds the peer for backend `i`.
    pub fn peer(&self, i: usize) -> HttpPeer {
        let b = &self.backends[i];
        let tls = self.config.tls_sni.is_some();
        let mut peer = HttpPeer::new(b.addr, tls, self.config.tls_sni.clone().unwrap_or_default());
        peer.options.idle_timeout = Some(self.config.keepalive_timeout);
        peer
    }

    /// Records a connect failure; returns true if the backend is now ejected.
    pub fn report_connect_failure(&self, i: usize) -> bool {
        let b = &self.backends[i];
        let failures = b.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.config.passive.consecutive_failures.get() {
            let until = self.now_ms() + self.config.passive.eject_for.as_millis() as u64;
            b.ejected_until_ms.store(until, Ordering::Relaxed);
            b.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(upstream = %self.config.name, backend = %b.label, "backend ejected after connect errors");
            return true;
        }
        false
    }

    /// Records a successful connect.
    pub fn report_connect_success(&self, i: usize) {
        let b = &self.backends[i];
        if b.consecutive_failures.load(Ordering::Relaxed) != 0 {
            b.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Health of every backend.
    pub fn health(&self) -> Vec<BackendHealth> {
        let now = self.now_ms();
        self.backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let backend = Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(b.addr),
                    weight: 1,
                    ext: Default::default(),
                };
                BackendHealth {
                    backend: b.label.clone(),
                    active_healthy: self.balancer.ready(&backend),
                    ejected: self.ejected(i, now),
                }
            })
            .collect()
    }

    /// Whether the active check ran at least once (true without a check), so
    /// readiness is not claimed on health nobody has looked at.
    pub fn first_check_done(&self) -> bool {
        self.checked_once.load(Ordering::Acquire)
    }

    /// Whether at least one backend can take traffic.
    pub fn any_healthy(&self) -> bool {
        self.health().iter().any(BackendHealth::healthy)
    }

    /// Runs the active check if it is due. Called often by the health
    /// service; a slow check never overlaps the next one.
    pub async fn health_check_if_due(self: &Arc<Self>) {
        let Some(hc) = &self.config.health_check else {
            return;
        };
        let now = self.now_ms();
        if now < self.next_check_ms.load(Ordering::Relaxed)
            || self.checking.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.next_check_ms
            .store(now + hc.interval.as_millis() as u64, Ordering::Relaxed);
        let this = Arc::clone(self);
        let deadline = hc.timeout + Duration::from_secs(1);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(deadline, this.balancer.run_health_check()).await;
            this.checked_once.store(true, Ordering::Release);
            this.checking.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn group(backends: &[&str]) -> UpstreamGroup {
        UpstreamGroup::new(&Upstream {
            name: "g".into(),
            backends: backends.iter().map(|s| s.to_string()).collect(),
            load_balancing: LoadBalancing::RoundRobin,
            tls_sni: None,
            health_check: None,
            passive: policies::PassiveHealth {
                consecutive_failures: NonZeroU32::new(2).unwrap(),
                eject_for: Duration::from_secs(60),
            },
            keepalive_timeout: Duration::from_secs(60),
        })
        .unwrap()
    }

    #[test]
    fn round_robin_skips_tried_and_ejected() {
        let g = group(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..6 {
            seen.insert(g.select(&[]).unwrap());
        }
        assert_eq!(seen.len(), 3, "round robin visits every backend");
        let first = g.select(&[]).unwrap();
        let second = g.select(&[first]).unwrap();
        assert_ne!(first, second);
        assert!(g.select(&[0, 1, 2]).is_none());

        assert!(!g.report_connect_failure(1));
        assert!(
            g.report_connect_failure(1),
            "second failure in a row ejects"
        );
        for _ in 0..6 {
            assert_ne!(g.select(&[]), Some(1));
        }
        assert!(!g.health()[1].healthy());
    }

    #[test]
    fn panic_mode_when_all_ejected() {
        let g = group(&["127.0.0.1:1", "127.0.0.1:2"]);
        for i in 0..2 {
            g.report_connect_failure(i);
            g.report_connect_failure(i);
        }
        assert!(!g.any_healthy());
        let a = g.select(&[]).unwrap();
        let b = g.select(&[a]).unwrap();
        assert_ne!(a, b);
    }
}
