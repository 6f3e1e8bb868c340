//! pingora-cache [`Storage`] on moka, bounded by bytes.
//!
//! # Layout
//!
//! moka holds one *family* per URL (normalised host, path and the query as
//! the route keys it): every stored response for that URL, whatever the
//! extra key parts (scheme, key headers and cookies, filter parts) and `Vary`
//! variants. Grouping by URL is what makes the operations an edge needs
//! cheap: invalidating a URL after a `POST`, or purging it, is one moka
//! removal for all its variants, and a prefix purge only walks keys. A
//! family's weight is the sum of its objects (body, header and key bytes),
//! so moka's byte bound counts everything it holds; families are replaced
//! copy-on-write under moka's per-key `and_compute_with`, so concurrent fills
//! of two variants never lose one.
//!
//! Inside a family an object is found by the combined hash pingora gives the
//! storage key (primary plus variance), so pingora's primary/secondary
//! variant slots work unchanged.
//!
//! # Hits without deserialising
//!
//! pingora's reference stores keep `CacheMeta` serialised (msgpack plus a
//! zstd-compressed header) and decode it on every hit. Here the header is
//! kept parsed and the meta is rebuilt from plain fields, which costs one
//! header clone. `CacheMeta::new` cannot restore two fields: `updated` is
//! carried as the epoch override, so `Age` stays right, and `provenance`
//! comes back as `created`, which can only make pingora distrust more
//! secondary variants (a miss), never serve a wrong one; purges here remove
//! whole families, so tombstones are not needed anyway.

use bytes::Bytes;
use pingora::cache::eviction::CacheEntryKey;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::predictor::{CacheablePredictor, Predictor};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, Storage};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Response headers whose values tag an object for purging.
pub const TAG_HEADERS: [&str; 2] = ["surrogate-key", "cache-tag"];

/// Bytes counted per object beyond body and headers (struct, Arcs, map slots).
const OBJECT_OVERHEAD: usize = 256;

/// The most an object may be: a share of the store, so one object cannot
/// flush everything else.
pub fn object_cap(store_size: u64) -> usize {
    usize::try_from(store_size / 8).unwrap_or(usize::MAX)
}

/// What a fill knows about its request that the storage key cannot carry
/// (set in the key's extensions by the cache-key callback).
#[derive(Clone, Debug)]
pub struct FillLimit(pub usize);

/// The freshness and header of a stored response, kept parsed.
struct StoredMeta {
    fresh_until: SystemTime,
    created: SystemTime,
    epoch: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
}

impl StoredMeta {
    fn from_meta(meta: &CacheMeta) -> Self {
        Self {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header().clone(),
        }
    }

    fn to_meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        if self.epoch != self.created {
            meta.set_epoch_override(self.epoch);
        }
        if let Some(v) = self.variance {
            meta.set_variance_key(v);
        }
        meta
    }

    fn header_bytes(&self) -> usize {
        self.header
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + 32
    }
}

/// One stored response.
pub struct Object {
    meta: StoredMeta,
    body: Bytes,
    tags: Box<[Box<str>]>,
    /// Soft purge: unix seconds it went out of service, 0 while in service.
    expired_at: AtomicU64,
    /// Servable as a fresh hit without pingora-cache's machinery
    /// ([`MokaStore::fresh`]): a `Content-Length` that is the stored body's,
    /// on a status that has a body.
    plain: bool,
    /// The hit lane's serialised head, made on the first lane hit.
    wire: OnceLock<HitWire>,
}

/// The part of a fresh hit's HTTP/1.1 head that is the same for every hit
/// of one object, serialised once by the hit lane (`proxy::lane`): the
/// status line and every stored field but those each hit sets itself.
pub struct HitWire {
    /// The request-id header left out of `head` (the one current when it
    /// was made).
    pub request_id_header: http::HeaderName,
    /// Status line and the stored fields, each line ending in CRLF.
    pub head: Bytes,
    /// The stored `Via`, which each hit appends its hop to.
    pub via: Option<http::HeaderValue>,
}

impl Object {
    fn new(meta: StoredMeta, body: Bytes) -> Self {
        let tags = TAG_HEADERS
            .iter()
            .flat_map(|h| meta.header.headers.get_all(*h))
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(|c: char| c == ',' || c.is_ascii_whitespace()))
            .filter(|t| !t.is_empty())
            .map(Box::from)
            .collect();
        let h = &meta.header;
        let status = h.status.as_u16();
        let mut lengths = h.headers.get_all(http::header::CONTENT_LENGTH).iter();
        let exact_length = match (lengths.next(), lengths.next()) {
            (Some(v), None) => {
                v.to_str().ok().and_then(|v| v.parse::<usize>().ok()) == Some(body.len())
            }
            _ => false,
        };
        let plain = exact_length
            && !h.headers.contains_key(http::header::TRANSFER_ENCODING)
            && status >= 200
            && !matches!(status, 204 | 304);
        Self {
            meta,
            body,
            tags,
            expired_at: AtomicU64::new(0),
            plain,
            wire: OnceLock::new(),
        }
    }

    /// The hit lane's serialised head, made by `make` on first use.
    pub fn hit_wire(&self, make: impl FnOnce(&ResponseHeader) -> HitWire) -> &HitWire {
        self.wire.get_or_init(|| make(&self.meta.header))
    }

    /// The stored response header.
    pub fn header(&self) -> &ResponseHeader {
        &self.meta.header
    }

    /// The stored body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The `Vary` variant it was stored as (`None` when the response does
    /// not vary, or only on headers the route leaves out).
    pub fn variance(&self) -> Option<HashBinary> {
        self.meta.variance
    }

    /// When it stops being fresh.
    pub fn fresh_until(&self) -> SystemTime {
        self.meta.fresh_until
    }

    /// Its `Age` at `now` in seconds (RFC 9111 §5.1), counted as pingora
    /// counts it: from when it was stored or last revalidated.
    pub fn age(&self, now: SystemTime) -> u64 {
        now.duration_since(self.meta.epoch)
            .map_or(0, |d| d.as_secs())
    }

    fn weight(&self) -> usize {
        // The header twice: as stored, and as the hit lane's serialised head.
        self.body.len()
            + 2 * self.meta.header_bytes()
            + self.tags.iter().map(|t| t.len() + 16).sum::<usize>()
            + OBJECT_OVERHEAD
    }

    fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| &**t == tag)
    }

    fn meta(&self) -> CacheMeta {
        let mut meta = self.meta.to_meta();
        let expired = self.expired_at.load(Ordering::Relaxed);
        if expired != 0 {
            meta.expire_at(UNIX_EPOCH + Duration::from_secs(expired));
        }
        meta
    }

    fn expire(&self, at: SystemTime) {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1));
        // Keep the earliest purge time: the stale windows run from it.
        let _ = self
            .expired_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                (old == 0 || secs < old).then_some(secs)
            });
    }
}

/// Every stored response for one URL.
#[derive(Default, Clone)]
pub struct Family {
    objects: Vec<(HashBinary, Arc<Object>)>,
}

impl Family {
    fn weight(&self, url: &[u8]) -> u32 {
        let w = url.len() + self.objects.iter().map(|(_, o)| o.weight()).sum::<usize>();
        u32::try_from(w).unwrap_or(u32::MAX)
    }

    fn get(&self, slot: &HashBinary) -> Option<&Arc<Object>> {
        self.objects.iter().find(|(s, _)| s == slot).map(|(_, o)| o)
    }

    fn with(&self, slot: HashBinary, object: Arc<Object>) -> Family {
        let mut objects: Vec<_> = self
            .objects
            .iter()
            .filter(|(s, _)| *s != slot)
            .cloned()
            .collect();
        objects.push((slot, object));
        Family { objects }
    }

    fn without(&self, keep: impl Fn(&HashBinary, &Object) -> bool) -> Family {
        Family {
            objects: self
                .objects
                .iter()
                .filter(|(s, o)| keep(s, o))
                .cloned()
                .collect(),
        }
    }
}

type Map = moka::sync::Cache<Box<[u8]>, Arc<Family>>;

/// The URL part of a primary key: everything before the first NUL
/// (see `super::key`).
pub fn url_of(primary: &[u8]) -> &[u8] {
    primary
        .iter()
        .position(|&b| b == 0)
        .map_or(primary, |i| &primary[..i])
}

/// Counters the store keeps itself (read into Prometheus at scrape time).
#[derive(Default)]
pub struct StoreCounters {
    /// Objects moka evicted for room.
    pub evictions: AtomicU64,
    /// Fills dropped because the body outgrew the object cap.
    pub too_large: AtomicU64,
    /// Lookups pingora-cache made (fresh hits served by
    /// [`MokaStore::fresh`] make none).
    pub lookups: AtomicU64,
}

/// The store: moka behind an `ArcSwap` so a reload can change its size.
pub struct MokaStore {
    map: arc_swap::ArcSwap<Map>,
    size: AtomicU64,
    predictor: &'static Predictor<16>,
    counters: Arc<StoreCounters>,
}

#[allow(clippy::borrowed_box)] // moka's weigher signature: `Fn(&K, &V)`
fn weigh(url: &Box<[u8]>, fam: &Arc<Family>) -> u32 {
    fam.weight(url)
}

fn build_map(size: u64, counters: &Arc<StoreCounters>) -> Map {
    let c = Arc::clone(counters);
    moka::sync::Cache::builder()
        .max_capacity(size)
        .weigher(weigh)
        .eviction_listener(move |_k, fam: Arc<Family>, cause| {
            if cause == moka::notification::RemovalCause::Size {
                c.evictions
                    .fetch_add(fam.objects.len() as u64, Ordering::Relaxed);
            }
        })
        .build()
}

impl MokaStore {
    /// A store holding at most `size` bytes.
    pub fn new(size: u64, predictor: &'static Predictor<16>) -> Self {
        let counters = Arc::new(StoreCounters::default());
        Self {
            map: arc_swap::ArcSwap::from_pointee(build_map(size, &counters)),
            size: AtomicU64::new(size),
            predictor,
            counters,
        }
    }

    /// The byte bound now.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Changes the byte bound: a new map is built and the old one's entries
    /// moved over (the new bound evicts what does not fit).
    pub fn resize(&self, size: u64) {
        if size == self.size() {
            return;
        }
        let fresh = build_map(size, &self.counters);
        let old = self.map.swap(Arc::new(fresh));
        let now = self.map.load();
        for (k, v) in old.iter() {
            now.insert(Box::from(&k[..]), v);
        }
        self.size.store(size, Ordering::Relaxed);
    }

    /// The object stored for `url` at `slot` when it can be served as is:
    /// fresh at `now` (pingora's rule, `fresh_until >= now`), never purged,
    /// and plain (see [`Object`]). Anything else — stale, soft-purged,
    /// missing — is `None`, and pingora-cache decides. Whether a varying
    /// object is the request's variant is the caller's to check
    /// ([`Object::variance`]).
    pub fn fresh(&self, url: &[u8], slot: &HashBinary, now: SystemTime) -> Option<Arc<Object>> {
        let fam = self.map.load().get(url)?;
        let object = fam.get(slot)?;
        let servable = object.plain
            && object.expired_at.load(Ordering::Relaxed) == 0
            && object.meta.fresh_until >= now;
        servable.then(|| Arc::clone(object))
    }

    /// Counters kept by the store.
    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// (bytes, objects) held now.
    pub fn usage(&self) -> (u64, u64) {
        let map = self.map.load();
        map.run_pending_tasks();
        let objects = map.iter().map(|(_, f)| f.objects.len() as u64).sum();
        (map.weighted_size(), objects)
    }

    /// Removes (or with `soft`, marks stale) every object for these URLs.
    /// Returns how many objects were affected.
    pub fn purge_url(&self, url: &[u8], soft: bool) -> u64 {
        let map = self.map.load();
        if soft {
            let Some(fam) = map.get(url) else { return 0 };
            let now = SystemTime::now();
            fam.objects.iter().for_each(|(_, o)| o.expire(now));
            fam.objects.len() as u64
        } else {
            map.remove(url).map_or(0, |f| f.objects.len() as u64)
        }
    }

    /// Purges every URL starting with `prefix` (host, newline, path prefix).
    pub fn purge_prefix(&self, prefix: &[u8], soft: bool) -> u64 {
        let keys: Vec<Arc<Box<[u8]>>> = self
            .map
            .load()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        keys.iter().map(|k| self.purge_url(k, soft)).sum()
    }

    /// Purges every object tagged `tag` by its origin.
    pub fn purge_tag(&self, tag: &str, soft: bool) -> u64 {
        let map = self.map.load();
        let keys: Vec<Arc<Box<[u8]>>> = map
            .iter()
            .filter(|(_, f)| f.objects.iter().any(|(_, o)| o.has_tag(tag)))
            .map(|(k, _)| k)
            .collect();
        let now = SystemTime::now();
        let mut n = 0;
        for k in keys {
            if soft {
                if let Some(fam) = map.get(&k[..]) {
                    for (_, o) in fam.objects.iter().filter(|(_, o)| o.has_tag(tag)) {
                        o.expire(now);
                        n += 1;
                    }
                }
                continue;
            }
            map.entry(Box::from(&k[..])).and_compute_with(|e| {
                let Some(e) = e else {
                    return moka::ops::compute::Op::Nop;
                };
                let fam = e.into_value();
                let kept = fam.without(|_, o| !o.has_tag(tag));
                n += (fam.objects.len() - kept.objects.len()) as u64;
                if kept.objects.is_empty() {
                    moka::ops::compute::Op::Remove
                } else {
                    moka::ops::compute::Op::Put(Arc::new(kept))
                }
            });
        }
        n
    }

    /// Removes one object (or, with no variance in `slot_key`, its whole family
    /// when `whole` is set) found by scanning: for pingora-driven purges, which
    /// only carry hashes.
    fn purge_hashed(&self, key: &CompactCacheKey) -> bool {
        let slot = key.combined_bin();
        let map = self.map.load();
        let found: Vec<Arc<Box<[u8]>>> = map
            .iter()
            .filter(|(_, f)| f.get(&slot).is_some())
            .map(|(k, _)| k)
            .collect();
        let mut removed = false;
        for k in found {
            map.entry(Box::from(&k[..])).and_compute_with(|e| {
                let Some(e) = e else {
                    return moka::ops::compute::Op::Nop;
                };
                let kept = e.into_value().without(|s, _| *s != slot);
                removed = true;
                if kept.objects.is_empty() {
                    moka::ops::compute::Op::Remove
                } else {
                    moka::ops::compute::Op::Put(Arc::new(kept))
                }
            });
        }
        removed
    }
}

/// Serving a stored body (whole, or a range of it).
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait::async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                InternalError,
                format!("seek start {start} past the body ({})", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collecting a response body on its way to the client.
struct Fill {
    store: &'static MokaStore,
    url: Box<[u8]>,
    slot: HashBinary,
    meta: Option<StoredMeta>,
    chunks: Vec<Bytes>,
    size: usize,
    cap: usize,
    overflowed: bool,
    key: CacheKey,
}

#[async_trait::async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.overflowed || data.is_empty() {
            return Ok(());
        }
        self.size += data.len();
        if self.size > self.cap {
            // Too big to keep: stream on to the client, store nothing, and
            // let the next request bypass the cache (and its lock).
            self.overflowed = true;
            self.chunks = Vec::new();
            self.store
                .counters
                .too_large
                .fetch_add(1, Ordering::Relaxed);
            self.store
                .predictor
                .mark_uncacheable(&self.key, NoCacheReason::ResponseTooLarge);
            return Ok(());
        }
        self.chunks.push(data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let Some(meta) = self.meta.take().filter(|_| !self.overflowed) else {
            return Ok(MissFinishType::Created(0));
        };
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = Vec::with_capacity(self.size);
                for c in &self.chunks {
                    all.extend_from_slice(c);
                }
                Bytes::from(all)
            }
        };
        let object = Arc::new(Object::new(meta, body));
        let weight = object.weight();
        let slot = self.slot;
        self.store
            .map
            .load()
            .entry(self.url.clone())
            .and_compute_with(|e| {
                let fam = e.map(|e| e.into_value()).unwrap_or_default();
                moka::ops::compute::Op::Put(Arc::new(fam.with(slot, object)))
            });
        Ok(MissFinishType::Created(weight))
    }
}

#[async_trait::async_trait]
impl Storage for MokaStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let Some(fam) = self.map.load().get(url_of(key.primary_key())) else {
            return Ok(None);
        };
        let Some(object) = fam.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let hit = Hit {
            body: object.body.clone(),
            start: 0,
            end: object.body.len(),
            done: false,
        };
        Ok(Some((object.meta(), Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let limit = key
            .extensions
            .get::<FillLimit>()
            .map_or(usize::MAX, |l| l.0);
        Ok(Box::new(Fill {
            store: self,
            url: Box::from(url_of(key.primary_key())),
            slot: key.combined_bin(),
            meta: Some(StoredMeta::from_meta(meta)),
            chunks: Vec::new(),
            size: 0,
            cap: limit.min(object_cap(self.size())),
            overflowed: false,
            key: key.clone(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = match target {
            PurgeTarget::Active(k) => k,
            PurgeTarget::Exact(CacheEntryKey::Identified { .. }) => {
                return Ok(PurgeOutcome::NotFound)
            }
            PurgeTarget::Exact(e) => e.key(),
        };
        Ok(if self.purge_hashed(key) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let url = url_of(key.primary_key());
        let slot = key.combined_bin();
        let mut found = false;
        self.map.load().entry(Box::from(url)).and_compute_with(|e| {
            let Some(e) = e else {
                return moka::ops::compute::Op::Nop;
            };
            let fam = e.into_value();
            let Some(old) = fam.get(&slot) else {
                return moka::ops::compute::Op::Nop;
            };
            found = true;
            let object = Object::new(StoredMeta::from_meta(meta), old.body.clone());
            moka::ops::compute::Op::Put(Arc::new(fam.with(slot, Arc::new(object))))
        });
        Ok(found)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> &'static MokaStore {
        let predictor = Box::leak(Box::new(Predictor::<16>::new(16, None)));
        Box::leak(Box::new(MokaStore::new(1 << 20, predictor)))
    }

    fn meta(tags: &str) -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        if !tags.is_empty() {
            h.insert_header("surrogate-key", tags).unwrap();
        }
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
    }

    async fn fill(s: &'static MokaStore, primary: &str, tags: &str, body: &'static [u8]) {
        fill_meta(s, primary, &meta(tags), body).await;
    }

    async fn fill_meta(
        s: &'static MokaStore,
        primary: &str,
        meta: &CacheMeta,
        body: &'static [u8],
    ) {
        let key = CacheKey::new(primary, "");
        let span = pingora::cache::trace::Span::inactive().handle();
        let mut h = s.get_miss_handler(&key, meta, &span).await.unwrap();
        h.write_body(Bytes::from_static(body), true).await.unwrap();
        h.finish().await.unwrap();
    }

    /// Served as is from [`MokaStore::fresh`], or `None`.
    fn fresh(s: &'static MokaStore, primary: &str) -> Option<Arc<Object>> {
        let slot = CacheKey::new(primary, "").combined_bin();
        s.fresh(url_of(primary.as_bytes()), &slot, SystemTime::now())
    }

    #[tokio::test]
    async fn only_plain_fresh_objects_are_offered_to_the_fast_path() {
        let s = store();
        let now = SystemTime::now();
        let with = |status: u16, fresh_for: i64, headers: &[(&str, &str)]| {
            let mut h = ResponseHeader::build(status, None).unwrap();
            for (n, v) in headers {
                h.append_header(n.to_string(), *v).unwrap();
            }
            let until = if fresh_for >= 0 {
                now + Duration::from_secs(fresh_for as u64)
            } else {
                now - Duration::from_secs(fresh_for.unsigned_abs())
            };
            CacheMeta::new(until, now - Duration::from_secs(5), 0, 0, h)
        };
        let cl = ("content-length", "4");
        fill_meta(s, "h\n/plain\0", &with(200, 60, &[cl]), b"body").await;
        fill_meta(s, "h\n/404\0", &with(404, 60, &[cl]), b"gone").await;
        fill_meta(s, "h\n/stale\0", &with(200, -1, &[cl]), b"body").await;
        let mut varied = with(200, 60, &[cl, ("vary", "accept")]);
        varied.set_variance_key([7; 16]);
        fill_meta(s, "h\n/vary\0", &varied, b"body").await;
        fill_meta(s, "h\n/nolen\0", &with(200, 60, &[]), b"body").await;
        fill_meta(
            s,
            "h\n/badlen\0",
            &with(200, 60, &[("content-length", "3")]),
            b"body",
        )
        .await;
        fill_meta(s, "h\n/twolen\0", &with(200, 60, &[cl, cl]), b"body").await;
        fill_meta(s, "h\n/purged\0", &with(200, 60, &[cl]), b"body").await;
        s.purge_url(b"h\n/purged", true);

        let hit = fresh(s, "h\n/plain\0").expect("a plain fresh object");
        assert_eq!(hit.body().as_ref(), b"body");
        assert_eq!(hit.header().status, 200);
        assert!(
            (5..=6).contains(&hit.age(SystemTime::now())),
            "age counts from storing"
        );
        assert!(hit.fresh_until() > now);
        assert!(fresh(s, "h\n/404\0").is_some(), "any status with a body");
        let v = fresh(s, "h\n/vary\0").expect("a varying object, for the caller to match");
        assert_eq!(v.variance(), Some([7; 16]));
        assert_eq!(hit.variance(), None);
        for not_plain in ["stale", "nolen", "badlen", "twolen", "purged", "missing"] {
            let primary = format!("h\n/{not_plain}\0");
            assert!(
                fresh(s, &primary).is_none(),
                "{not_plain} goes through pingora-cache"
            );
        }
        // Every one of them is still there for pingora-cache.
        let before = s.counters().lookups.load(Ordering::Relaxed);
        assert!(body(s, "h\n/vary\0").await.is_some());
        assert_eq!(s.counters().lookups.load(Ordering::Relaxed), before + 1);
    }

    async fn body(s: &'static MokaStore, primary: &str) -> Option<Bytes> {
        let key = CacheKey::new(primary, "");
        let (_, mut hit) = s
            .lookup(&key, &pingora::cache::trace::Span::inactive().handle())
            .await
            .unwrap()?;
        hit.read_body().await.unwrap()
    }

    #[tokio::test]
    async fn variants_of_one_url_share_a_family_and_purge_together() {
        let s = store();
        fill(s, "h\n/a\0http\0", "t1", b"one").await;
        fill(s, "h\n/a\0https\0", "", b"two").await;
        fill(s, "h\n/b\0http\0", "t1 t2", b"three").await;
        assert_eq!(body(s, "h\n/a\0http\0").await.unwrap(), "one");
        assert_eq!(body(s, "h\n/a\0https\0").await.unwrap(), "two");
        assert_eq!(s.purge_url(b"h\n/a", false), 2);
        assert!(body(s, "h\n/a\0http\0").await.is_none());
        assert_eq!(body(s, "h\n/b\0http\0").await.unwrap(), "three");
    }

    #[tokio::test]
    async fn tags_and_prefixes_select_what_to_purge() {
        let s = store();
        fill(s, "h\n/x/1\0", "red", b"1").await;
        fill(s, "h\n/x/2\0", "blue,red", b"2").await;
        fill(s, "h\n/y\0", "blue", b"3").await;
        assert_eq!(s.purge_tag("blue", false), 2);
        assert_eq!(body(s, "h\n/x/1\0").await.unwrap(), "1");
        assert!(body(s, "h\n/y\0").await.is_none());
        assert_eq!(s.purge_prefix(b"h\n/x/", false), 1);
        assert!(body(s, "h\n/x/1\0").await.is_none());
    }

    #[tokio::test]
    async fn soft_purge_keeps_the_body_but_makes_it_stale() {
        let s = store();
        fill(s, "h\n/s\0", "", b"body").await;
        assert_eq!(s.purge_url(b"h\n/s", true), 1);
        let key = CacheKey::new("h\n/s\0", "");
        let (meta, _) = s
            .lookup(&key, &pingora::cache::trace::Span::inactive().handle())
            .await
            .unwrap()
            .unwrap();
        assert!(!meta.is_fresh(SystemTime::now()));
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_not_stored() {
        let s = store();
        let mut key = CacheKey::new("h\n/big\0", "");
        key.extensions.insert(FillLimit(4));
        let span = pingora::cache::trace::Span::inactive().handle();
        let mut h = s.get_miss_handler(&key, &meta(""), &span).await.unwrap();
        h.write_body(Bytes::from_static(b"abc"), false)
            .await
            .unwrap();
        h.write_body(Bytes::from_static(b"def"), true)
            .await
            .unwrap();
        h.finish().await.unwrap();
        assert!(body(s, "h\n/big\0").await.is_none());
        assert!(!s.predictor.cacheable_prediction(&key));
    }
}
