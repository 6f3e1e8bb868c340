//! Rate-limit state held by the host: one `governor` GCRA keyed limiter per
//! configured bucket, shared by every request and worker thread.
//!
//! Filters hold the policy (which bucket, which key, what cost); the host
//! holds the state, so it survives instance teardown, config reloads (an
//! unchanged bucket keeps its state) and is the one place a distributed
//! backend would plug in (the [`RateLimiters::check`] signature is the seam).

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use policies::RateLimit;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One bucket definition and its per-key state.
pub struct Bucket {
    /// The definition it was built from.
    pub config: RateLimit,
    limiter: Keyed,
    clock: DefaultClock,
    replenish: Duration,
}

/// A bucket's state after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Burst size.
    pub limit: u32,
    /// Cells left.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset_after: Duration,
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed; the cost was taken.
    Allowed(BucketState),
    /// Limited; retry after the duration.
    Limited(BucketState, Duration),
}

/// Why no check was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckError {
    /// No such bucket.
    UnknownBucket,
    /// Cost 0 or beyond the burst.
    InvalidCost,
}

impl Bucket {
    /// A bucket from its definition: `burst` at once, one cell back every `per / rate`.
    pub fn new(config: &RateLimit) -> Self {
        let replenish = (config.per / config.rate.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(replenish)
            .unwrap_or_else(|| Quota::per_second(config.rate))
            .allow_burst(config.burst);
        Self {
            config: config.clone(),
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            clock: DefaultClock::default(),
            replenish,
        }
    }

    /// Takes `cost` cells for `key`.
    pub fn check(&self, key: &str, cost: u32) -> Result<Outcome, CheckError> {
        let n = NonZeroU32::new(cost).ok_or(CheckError::InvalidCost)?;
        let limit = self.config.burst.get();
        let key = key.to_string();
        match self.limiter.check_key_n(&key, n) {
            Err(_) => Err(CheckError::InvalidCost),
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(Outcome::Allowed(BucketState {
                    limit,
                    remaining,
                    reset_after: self.replenish * (limit - remaining.min(limit)),
                }))
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                // `wait` is until one cell fits; `cost` cells need the rest too.
                let retry = wait + self.replenish * (cost - 1);
                Ok(Outcome::Limited(
                    BucketState {
                        limit,
                        remaining: 0,
                        reset_after: self.replenish * limit,
                    },
                    retry,
                ))
            }
        }
    }

    /// Forgets keys whose bucket is full again (indistinguishable from new).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        if self.limiter.len() > self.config.max_keys {
            self.limiter.shrink_to_fit();
        }
    }

    /// Keys currently held.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

/// All buckets of a config generation.
#[derive(Default, Clone)]
pub struct RateLimiters {
    buckets: HashMap<String, Arc<Bucket>>,
}

impl RateLimiters {
    /// Builds the buckets of `defs`, reusing unchanged ones from `previous`
    /// so a reload keeps their state.
    pub fn new<'a>(
        defs: impl IntoIterator<Item = &'a RateLimit>,
        previous: Option<&RateLimiters>,
    ) -> Self {
        let buckets = defs
            .into_iter()
            .map(|d| {
                let reused = previous
                    .and_then(|p| p.buckets.get(&d.name))
                    .filter(|b| b.config == *d)
                    .cloned();
                (
                    d.name.clone(),
                    reused.unwrap_or_else(|| Arc::new(Bucket::new(d))),
                )
            })
            .collect();
        Self { buckets }
    }

    /// Checks `bucket` for `key`.
    pub fn check(&self, bucket: &str, key: &str, cost: u32) -> Result<Outcome, CheckError> {
        self.buckets
            .get(bucket)
            .ok_or(CheckError::UnknownBucket)?
            .check(key, cost)
    }

    /// Runs [`Bucket::forget_idle`] on every bucket.
    pub fn forget_idle(&self) {
        self.buckets.values().for_each(|b| b.forget_idle());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(rate: u32, burst: u32) -> RateLimit {
        RateLimit {
            name: "b".into(),
            rate: NonZeroU32::new(rate).unwrap(),
            per: Duration::from_secs(1),
            burst: NonZeroU32::new(burst).unwrap(),
            max_keys: 10,
        }
    }

    #[test]
    fn burst_then_limited_per_key() {
        let b = Bucket::new(&def(1, 3));
        for left in [2, 1, 0] {
            match b.check("alice", 1).unwrap() {
                Outcome::Allowed(s) => assert_eq!((s.limit, s.remaining), (3, left)),
                other => panic!("{other:?}"),
            }
        }
        match b.check("alice", 1).unwrap() {
            Outcome::Limited(_, retry) => {
                assert!(retry > Duration::from_millis(500) && retry <= Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(b.check("bob", 1), Ok(Outcome::Allowed(_))),
            "keys are independent"
        );
        assert_eq!(b.check("bob", 0), Err(CheckError::InvalidCost));
        assert_eq!(b.check("bob", 4), Err(CheckError::InvalidCost));
    }

    #[test]
    fn reload_keeps_unchanged_buckets() {
        let d = def(1, 1);
        let first = RateLimiters::new([&d], None);
        assert!(matches!(first.check("b", "k", 1), Ok(Outcome::Allowed(_))));
        let second = RateLimiters::new([&d], Some(&first));
        assert!(
            matches!(second.check("b", "k", 1), Ok(Outcome::Limited(..))),
            "state survived"
        );
        let changed = def(1, 2);
        let third = RateLimiters::new([&changed], Some(&second));
        assert!(
            matches!(third.check("b", "k", 1), Ok(Outcome::Allowed(_))),
            "a changed bucket starts fresh"
        );
        assert_eq!(third.check("nope", "k", 1), Err(CheckError::UnknownBucket));
    }
}
