//! Prometheus metrics, one registry per gateway (not the global one, so
//! several gateways can live in one test process).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// All metrics of one gateway.
pub struct Metrics {
    registry: Registry,
    /// `edgegate_requests_total{route,status}`
    pub requests: IntCounterVec,
    /// `edgegate_request_duration_seconds{route}`
    pub duration: HistogramVec,
    /// `edgegate_requests_in_flight`
    pub in_flight: IntGauge,
    /// `edgegate_upstream_backend_healthy{upstream,backend}` (set at scrape time)
    pub backend_healthy: IntGaugeVec,
    /// `edgegate_upstream_errors_total{upstream,backend,kind}`
    pub upstream_errors: IntCounterVec,
    /// `edgegate_config_generation`
    pub config_generation: IntGauge,
    /// `edgegate_config_reloads_total{result}`
    pub reloads: IntCounterVec,
    /// `edgegate_draining`
    pub draining: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "edgegate_requests_total",
                "Requests served, by route and status",
            ),
            &["route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "edgegate_request_duration_seconds",
                "Time from request head to the end of the response, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )?;
        let in_flight = IntGauge::new("edgegate_requests_in_flight", "Requests being served")?;
        let backend_healthy = IntGaugeVec::new(
            Opts::new(
                "edgegate_upstream_backend_healthy",
                "1 when the backend takes traffic (active check up and not ejected)",
            ),
            &["upstream", "backend"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "edgegate_upstream_errors_total",
                "Upstream failures by kind",
            ),
            &["upstream", "backend", "kind"],
        )?;
        let config_generation = IntGauge::new(
            "edgegate_config_generation",
            "Generation of the config serving now",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("edgegate_config_reloads_total", "Config reloads by result"),
            &["result"],
        )?;
        let draining = IntGauge::new("edgegate_draining", "1 while the node drains")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(backend_healthy.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(config_generation.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            in_flight,
            backend_healthy,
            upstream_errors,
            config_generation,
            reloads,
            draining,
        })
    }

    /// Text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
