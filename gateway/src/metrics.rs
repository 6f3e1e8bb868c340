//! Prometheus metrics, one registry per gateway (not the global one, so
//! several gateways can live in one test process).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    /// `edgegate_filter_decisions_total{route,filter,decision}`
    pub filter_decisions: IntCounterVec,
    /// `edgegate_filter_errors_total{route,filter,kind}`
    pub filter_errors: IntCounterVec,
    /// `edgegate_filter_instantiate_seconds{filter}`
    pub filter_instantiate: HistogramVec,
    /// `edgegate_filter_run_seconds{filter}`
    pub filter_run: HistogramVec,
    /// `edgegate_filter_memory_peak_bytes{filter}`
    pub filter_memory_peak: HistogramVec,
    /// `edgegate_filter_memory_grows_total{route,filter}`
    pub filter_memory_grows: IntCounterVec,
    /// `edgegate_filter_instances_total{filter,kind}`
    pub filter_instances: IntCounterVec,
    /// `edgegate_cache_requests_total{route,result}`
    pub cache_requests: IntCounterVec,
    /// `edgegate_cache_coalesced_total{route}`: requests that waited on another's fill
    pub cache_coalesced: IntCounterVec,
    /// `edgegate_cache_lane_hits_total`: hits the hit lane answered
    pub cache_lane_hits: IntCounter,
    /// `edgegate_relayed_total`: requests the relay proxied
    pub relayed: IntCounter,
    /// `edgegate_cache_evictions_total` (brought up to date at scrape time)
    pub cache_evictions: IntCounter,
    /// `edgegate_cache_too_large_total` (brought up to date at scrape time)
    pub cache_too_large: IntCounter,
    /// `edgegate_cache_bytes` (set at scrape time)
    pub cache_bytes: IntGauge,
    /// `edgegate_cache_objects` (set at scrape time)
    pub cache_objects: IntGauge,
    /// `edgegate_cache_capacity_bytes` (set at scrape time)
    pub cache_capacity: IntGauge,
    /// `edgegate_cache_purges_total{kind}`
    pub cache_purges: IntCounterVec,
    /// `edgegate_cache_purged_objects_total{kind}`
    pub cache_purged_objects: IntCounterVec,
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
        let filter_decisions = IntCounterVec::new(
            Opts::new(
                "edgegate_filter_decisions_total",
                "Filter calls that returned, by decision",
            ),
            &["route", "filter", "decision"],
        )?;
        let filter_errors = IntCounterVec::new(
            Opts::new(
                "edgegate_filter_errors_total",
                "Filter calls that failed, by kind (timeout, out_of_memory, trap, bad_answer, overloaded)",
            ),
            &["route", "filter", "kind"],
        )?;
        let micro = vec![
            0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005,
            0.025, 0.1,
        ];
        let filter_instantiate = HistogramVec::new(
            HistogramOpts::new(
                "edgegate_filter_instantiate_seconds",
                "Fresh instance creation per call",
            )
            .buckets(micro.clone()),
            &["filter"],
        )?;
        let filter_run = HistogramVec::new(
            HistogramOpts::new("edgegate_filter_run_seconds", "Guest run time per call")
                .buckets(micro),
            &["filter"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(backend_healthy.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(config_generation.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        registry.register(Box::new(filter_decisions.clone()))?;
        registry.register(Box::new(filter_errors.clone()))?;
        registry.register(Box::new(filter_instantiate.clone()))?;
        registry.register(Box::new(filter_run.clone()))?;
        let filter_memory_peak = HistogramVec::new(
            HistogramOpts::new(
                "edgegate_filter_memory_peak_bytes",
                "Largest linear memory a filter call grew to",
            )
            .buckets(prometheus::exponential_buckets(65536.0, 4.0, 8)?),
            &["filter"],
        )?;
        registry.register(Box::new(filter_memory_peak.clone()))?;
        let filter_memory_grows = IntCounterVec::new(
            Opts::new(
                "edgegate_filter_memory_grows_total",
                "Filter calls whose linear memory grew past its initial size: each such \
                 call also pays for resizing a pooled memory (~9 µs here), so a filter \
                 that grows on most requests wants a larger initial memory",
            ),
            &["route", "filter"],
        )?;
        registry.register(Box::new(filter_memory_grows.clone()))?;
        let filter_instances = IntCounterVec::new(
            Opts::new(
                "edgegate_filter_instances_total",
                "Instances filter calls ran in: fresh (instantiated for the call), recycled \
                 (reset after an earlier call; server.filter_recycling)",
            ),
            &["filter", "kind"],
        )?;
        registry.register(Box::new(filter_instances.clone()))?;
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "edgegate_cache_requests_total",
                "Requests on caching routes by cache result (hit, stale, miss, expired, revalidated, bypass)",
            ),
            &["route", "result"],
        )?;
        let cache_coalesced = IntCounterVec::new(
            Opts::new(
                "edgegate_cache_coalesced_total",
                "Requests that waited for another request's fill of the same key",
            ),
            &["route"],
        )?;
        let cache_lane_hits = IntCounter::new(
            "edgegate_cache_lane_hits_total",
            "Fresh hits answered by the hit lane, before Pingora's session \
             (also counted as hits in edgegate_cache_requests_total)",
        )?;
        let relayed = IntCounter::new(
            "edgegate_relayed_total",
            "Requests proxied by the relay, edgegate's own HTTP/1.1 path beside \
             Pingora's (also counted in edgegate_requests_total)",
        )?;
        let cache_evictions = IntCounter::new(
            "edgegate_cache_evictions_total",
            "Objects evicted to stay within the cache size",
        )?;
        let cache_too_large = IntCounter::new(
            "edgegate_cache_too_large_total",
            "Fills dropped because the body outgrew the object size cap",
        )?;
        let cache_bytes = IntGauge::new("edgegate_cache_bytes", "Bytes held by the cache")?;
        let cache_objects = IntGauge::new("edgegate_cache_objects", "Objects held by the cache")?;
        let cache_capacity =
            IntGauge::new("edgegate_cache_capacity_bytes", "The cache's byte bound")?;
        let cache_purges = IntCounterVec::new(
            Opts::new(
                "edgegate_cache_purges_total",
                "Purge operations by kind (url, prefix, tag, invalidation)",
            ),
            &["kind"],
        )?;
        let cache_purged_objects = IntCounterVec::new(
            Opts::new(
                "edgegate_cache_purged_objects_total",
                "Objects removed or marked stale by purges, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(cache_coalesced.clone()))?;
        registry.register(Box::new(cache_lane_hits.clone()))?;
        registry.register(Box::new(relayed.clone()))?;
        registry.register(Box::new(cache_evictions.clone()))?;
        registry.register(Box::new(cache_too_large.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(cache_objects.clone()))?;
        registry.register(Box::new(cache_capacity.clone()))?;
        registry.register(Box::new(cache_purges.clone()))?;
        registry.register(Box::new(cache_purged_objects.clone()))?;
        Ok(Self {
            cache_requests,
            cache_coalesced,
            cache_lane_hits,
            relayed,
            cache_evictions,
            cache_too_large,
            cache_bytes,
            cache_objects,
            cache_capacity,
            cache_purges,
            cache_purged_objects,
            registry,
            requests,
            duration,
            in_flight,
            backend_healthy,
            upstream_errors,
            config_generation,
            reloads,
            draining,
            filter_decisions,
            filter_errors,
            filter_instantiate,
            filter_run,
            filter_memory_peak,
            filter_memory_grows,
            filter_instances,
        })
    }

    /// Handles for one route, resolved once per config generation so the
    /// request path does no label hashing.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            cache: crate::cache::CacheResult::ALL
                .iter()
                .map(|r| self.cache_requests.with_label_values(&[route, r.label()]))
                .collect(),
            coalesced: self.cache_coalesced.with_label_values(&[route]),
            duration: self.duration.with_label_values(&[route]),
            requests: STATUS_LABELS
                .iter()
                .map(|status| self.requests.with_label_values(&[route, status]))
                .collect(),
        }
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

/// Status labels: common codes by value, the rest by class.
pub const STATUS_LABELS: [&str; 22] = [
    "0", "1xx", "2xx", "3xx", "4xx", "5xx", "200", "204", "206", "301", "302", "304", "400", "401",
    "403", "404", "413", "429", "431", "500", "502", "504",
];

/// The mean of one filter's observations in a per-filter histogram
/// (`None` before its first call).
pub fn filter_mean(h: &HistogramVec, filter: &str) -> Option<f64> {
    let h = h.with_label_values(&[filter]);
    let count = h.get_sample_count();
    (count > 0).then(|| h.get_sample_sum() / count as f64)
}

/// Index into [`STATUS_LABELS`].
pub fn status_index(status: u16) -> usize {
    match status {
        200 => 6,
        204 => 7,
        206 => 8,
        301 => 9,
        302 => 10,
        304 => 11,
        400 => 12,
        401 => 13,
        403 => 14,
        404 => 15,
        413 => 16,
        429 => 17,
        431 => 18,
        500 => 19,
        502 => 20,
        504 => 21,
        0 => 0,
        s => usize::from((s / 100).clamp(1, 5)),
    }
}

/// Pre-resolved metric handles of one route.
pub struct RouteMetrics {
    /// Request duration.
    pub duration: prometheus::Histogram,
    /// Requests by [`status_index`].
    pub requests: Vec<prometheus::IntCounter>,
    /// Cache results by [`crate::cache::CacheResult`] index.
    pub cache: Vec<prometheus::IntCounter>,
    /// Requests that waited on another request's fill.
    pub coalesced: prometheus::IntCounter,
}

impl RouteMetrics {
    /// Counts one finished request.
    pub fn observe(&self, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        if let Some(c) = self.requests.get(status_index(status)) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_index_labels() {
        assert_eq!(STATUS_LABELS[status_index(200)], "200");
        assert_eq!(STATUS_LABELS[status_index(201)], "2xx");
        assert_eq!(STATUS_LABELS[status_index(503)], "5xx");
        assert_eq!(STATUS_LABELS[status_index(504)], "504");
        assert_eq!(STATUS_LABELS[status_index(0)], "0");
        assert_eq!(STATUS_LABELS[status_index(999)], "5xx");
    }
}
