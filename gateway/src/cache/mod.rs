//! The in-memory HTTP response cache.
//!
//! pingora-cache runs the HTTP semantics (lookup, freshness, the cache lock
//! that coalesces concurrent misses, revalidation with `304`, serving stale
//! while revalidating or on error, `HEAD` and ranges from a stored `GET`);
//! edgegate supplies the pieces around it:
//!
//! - [`storage`]: a pingora [`Storage`](pingora::cache::Storage) on moka,
//!   bounded by bytes, grouped by URL for cheap invalidation and purges;
//! - [`key`]: cache keys from the route's policy (query handling, key
//!   headers and cookies, filter-provided parts) and `Vary`;
//! - [`policy`]: what may be stored and for how long;
//! - this module: the process-wide store, lock and predictor, the per-request
//!   state behind `Cache-Status` (RFC 9211), and purges.
//!
//! Plain fresh hits (a fresh object that does not vary or is the request's
//! variant in the primary slot, a `GET`/`HEAD` without range or conditional
//! headers) never enter pingora-cache: `proxy::fresh` answers them straight
//! from [`storage::MokaStore::fresh`] in `request_filter`, which cuts the
//! hit path's CPU by ~10%. On HTTP/1.1 most of them do not even reach
//! Pingora's session: `proxy::lane` answers them as the connection's bytes
//! arrive, another quarter off (a hit costs less CPU than haproxy's). Everything else
//! takes pingora-cache's path, so its semantics stay in one place.
//!
//! The store outlives config generations (a reload keeps the cache warm) and
//! is created once per gateway; pingora wants `&'static` handles, so the
//! store, lock and predictor are leaked once at start.

pub mod key;
pub mod policy;
pub mod storage;

use crate::metrics::Metrics;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::{CachePhase, NoCacheReason};
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use storage::MokaStore;

/// How long one fill may hold a key's lock before waiting requests compete
/// again (the route's `lock_timeout` bounds how long each of them waits).
const LOCK_AGE: Duration = Duration::from_secs(30);

/// Uncacheable keys remembered (16 shards of this many), so they skip the
/// lock next time instead of queueing behind each other.
const PREDICTOR_SHARD: usize = 4096;

/// The process-wide cache.
pub struct Cache {
    /// Where responses live.
    pub store: &'static MokaStore,
    /// Coalesces concurrent misses for one key.
    pub lock: &'static CacheKeyLockImpl,
    /// Remembers keys that turned out uncacheable.
    pub predictor: &'static Predictor<16>,
    seen_evictions: AtomicU64,
    seen_too_large: AtomicU64,
    hash_keys: (RandomState, RandomState),
}

impl Cache {
    /// A cache of `size` bytes.
    pub fn new(size: u64) -> Self {
        let predictor: &'static Predictor<16> =
            Box::leak(Box::new(Predictor::new(PREDICTOR_SHARD, None)));
        let store: &'static MokaStore = Box::leak(Box::new(MokaStore::new(size, predictor)));
        let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(LOCK_AGE));
        Self {
            store,
            lock,
            predictor,
            seen_evictions: AtomicU64::new(0),
            seen_too_large: AtomicU64::new(0),
            hash_keys: (RandomState::new(), RandomState::new()),
        }
    }

    /// The 128-bit hash pingora keys locks, the predictor and slots by.
    ///
    /// pingora hashes the primary key with BLAKE2b on every use (the
    /// predictor, the lock and the storage each ask: 2.4% of a cache hit's
    /// CPU in a profile). Two SipHash-1-3 hashes under random per-process
    /// keys give the same 128 bits once per request; being keyed, nobody who
    /// does not know the keys can make two URLs collide, and the store is
    /// in memory only, so the hash never needs to be stable across restarts.
    pub fn primary_hash(&self, primary: &[u8]) -> pingora::cache::key::HashBinary {
        let a = self.hash_keys.0.hash_one(primary).to_be_bytes();
        let b = self.hash_keys.1.hash_one(primary).to_be_bytes();
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&a);
        out[8..].copy_from_slice(&b);
        out
    }

    /// Brings the scrape-time cache metrics up to date.
    pub fn refresh_metrics(&self, m: &Metrics) {
        let (bytes, objects) = self.store.usage();
        m.cache_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        m.cache_objects
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
        m.cache_capacity
            .set(i64::try_from(self.store.size()).unwrap_or(i64::MAX));
        let c = self.store.counters();
        let catch_up = |seen: &AtomicU64, now: u64, counter: &prometheus::IntCounter| {
            let before = seen.swap(now, Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(before));
        };
        catch_up(
            &self.seen_evictions,
            c.evictions.load(Ordering::Relaxed),
            &m.cache_evictions,
        );
        catch_up(
            &self.seen_too_large,
            c.too_large.load(Ordering::Relaxed),
            &m.cache_too_large,
        );
    }
}

/// What happened to a request on a caching route (metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served fresh from the cache.
    Hit,
    /// Served stale (while revalidating, or because the origin failed).
    Stale,
    /// Not in the cache: fetched.
    Miss,
    /// In the cache but stale: fetched again in full.
    Expired,
    /// In the cache but stale: the origin confirmed it (304).
    Revalidated,
    /// The cache was not used (method, predicted uncacheable).
    Bypass,
}

impl CacheResult {
    /// Every result, in index order.
    pub const ALL: [CacheResult; 6] = [
        CacheResult::Hit,
        CacheResult::Stale,
        CacheResult::Miss,
        CacheResult::Expired,
        CacheResult::Revalidated,
        CacheResult::Bypass,
    ];

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Stale => "stale",
            CacheResult::Miss => "miss",
            CacheResult::Expired => "expired",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Bypass => "bypass",
        }
    }

    /// Its index in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Per-request cache facts (part of the proxy's request context).
#[derive(Debug, Default)]
pub struct CacheCtx {
    /// The method is not cacheable (only `GET` and `HEAD` are).
    pub method_bypass: bool,
    /// The client's `no-cache` forced revalidation (route allows it).
    pub client_no_cache: bool,
    /// A stored response existed for the URL but not for this variant.
    pub vary_miss: bool,
    /// Went to the origin after the lookup found nothing usable.
    pub missed: bool,
    /// Status the origin answered this request with, if it was asked.
    pub fwd_status: Option<u16>,
    /// Printable key (debug mode only).
    pub key: Option<String>,
    /// Answered fresh from the store before pingora-cache ran
    /// (`proxy::fresh`): a hit.
    pub fresh_hit: bool,
}

/// The request's outcome as the cache saw it.
pub struct Outcome {
    /// For metrics.
    pub result: CacheResult,
    /// The `Cache-Status` value.
    pub status: String,
}

fn detail(reason: NoCacheReason) -> String {
    reason.as_str().to_ascii_lowercase()
}

/// What happened to a request, for metrics (no allocation).
pub fn classify(phase: CachePhase, cx: &CacheCtx, waited: bool) -> CacheResult {
    match phase {
        CachePhase::Hit if waited => CacheResult::Miss,
        CachePhase::Hit => CacheResult::Hit,
        CachePhase::StaleUpdating | CachePhase::Stale => CacheResult::Stale,
        CachePhase::Miss => CacheResult::Miss,
        CachePhase::Expired => CacheResult::Expired,
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheResult::Revalidated,
        CachePhase::Disabled(_) if cx.missed => CacheResult::Miss,
        CachePhase::Bypass
        | CachePhase::Disabled(_)
        | CachePhase::Uninit
        | CachePhase::CacheKey => CacheResult::Bypass,
    }
}

/// Classifies a request and renders its RFC 9211 `Cache-Status`.
///
/// `fresh_until` is the stored response's, when one was used; `waited`
/// says the request waited on another request's fill.
pub fn outcome(
    pop: &str,
    phase: CachePhase,
    cx: &CacheCtx,
    fresh_until: Option<SystemTime>,
    waited: bool,
) -> Outcome {
    let mut s = String::with_capacity(48);
    s.push_str(pop);
    let ttl = fresh_until.map(|f| match f.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64) - 1,
    });
    let fwd_status = |s: &mut String| {
        if let Some(st) = cx.fwd_status {
            let _ = write!(s, "; fwd-status={st}");
        }
    };
    let miss_kind = if cx.vary_miss {
        "vary-miss"
    } else {
        "uri-miss"
    };
    let result = classify(phase, cx, waited);
    match phase {
        CachePhase::Hit if waited => {
            let _ = write!(s, "; fwd={miss_kind}; collapsed");
        }
        CachePhase::Hit => {
            s.push_str("; hit");
        }
        CachePhase::StaleUpdating => {
            s.push_str("; hit; detail=stale-while-revalidate");
        }
        CachePhase::Stale => {
            s.push_str("; fwd=stale");
            fwd_status(&mut s);
            s.push_str("; detail=stale-if-error");
        }
        CachePhase::Miss => {
            let _ = write!(s, "; fwd={miss_kind}");
            fwd_status(&mut s);
            s.push_str("; stored");
        }
        CachePhase::Expired => {
            s.push_str(if cx.client_no_cache {
                "; fwd=request"
            } else {
                "; fwd=stale"
            });
            fwd_status(&mut s);
            s.push_str("; stored");
        }
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
            s.push_str(if cx.client_no_cache {
                "; fwd=request"
            } else {
                "; fwd=stale"
            });
            fwd_status(&mut s);
            if let CachePhase::RevalidatedNoCache(r) = phase {
                let _ = write!(s, "; detail={}", detail(r));
            }
        }
        CachePhase::Bypass => {
            s.push_str("; fwd=bypass");
            fwd_status(&mut s);
            s.push_str("; detail=uncacheable");
        }
        CachePhase::Disabled(reason) if cx.missed => {
            let _ = write!(s, "; fwd={miss_kind}");
            fwd_status(&mut s);
            let _ = write!(s, "; detail={}", detail(reason));
        }
        CachePhase::Disabled(_) if cx.method_bypass => {
            s.push_str("; fwd=method");
            fwd_status(&mut s);
        }
        CachePhase::Disabled(reason) => {
            s.push_str("; fwd=bypass");
            fwd_status(&mut s);
            let _ = write!(s, "; detail={}", detail(reason));
        }
        CachePhase::Uninit | CachePhase::CacheKey => {
            s.push_str("; fwd=bypass");
        }
    };
    if let (Some(ttl), true) = (
        ttl,
        matches!(
            phase,
            CachePhase::Hit
                | CachePhase::StaleUpdating
                | CachePhase::Stale
                | CachePhase::Revalidated
        ),
    ) {
        let _ = write!(s, "; ttl={ttl}");
    }
    if let Some(k) = &cx.key {
        s.push_str("; key=\"");
        for ch in k.chars() {
            match ch {
                '"' | '\\' => {
                    s.push('\\');
                    s.push(ch);
                }
                ' '..='~' => s.push(ch),
                _ => s.push('?'),
            }
        }
        s.push('"');
    }
    Outcome { result, status: s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_values() {
        let cx = CacheCtx::default();
        let in_a_minute = Some(SystemTime::now() + Duration::from_secs(61));
        let o = outcome("pop1", CachePhase::Hit, &cx, in_a_minute, false);
        assert_eq!(o.result, CacheResult::Hit);
        assert!(o.status.starts_with("pop1; hit; ttl=6"), "{}", o.status);
        let cx = CacheCtx {
            fwd_status: Some(200),
            vary_miss: true,
            ..Default::default()
        };
        let o = outcome("p", CachePhase::Miss, &cx, None, false);
        assert_eq!(o.status, "p; fwd=vary-miss; fwd-status=200; stored");
        let cx = CacheCtx {
            key: Some("a\"b".into()),
            method_bypass: true,
            ..Default::default()
        };
        let o = outcome(
            "p",
            CachePhase::Disabled(NoCacheReason::NeverEnabled),
            &cx,
            None,
            false,
        );
        assert_eq!(o.status, "p; fwd=method; key=\"a\\\"b\"");
        let stale = Some(SystemTime::now() - Duration::from_secs(5));
        let o = outcome("p", CachePhase::StaleUpdating, &cx, stale, false);
        assert_eq!(o.result, CacheResult::Stale);
        assert!(o.status.contains("ttl=-"), "{}", o.status);
    }
}
