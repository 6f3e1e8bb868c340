//! The filter host: runs per-route WebAssembly filter components
//! (`edgegate:filter@0.2.0`, see `filters/wit/filter.wit`) with wasmtime.
//!
//! # Design, and why
//!
//! - **One engine per process**, pooling allocator, epoch interruption with a
//!   1 ms ticker thread. Components are compiled once per content hash (in
//!   memory, and as precompiled artifacts on disk when a cache directory is
//!   configured, keyed by content hash and the engine's compatibility hash),
//!   then pre-instantiated per route filter into a `FilterPre` at config load:
//!   a component that does not compile, lacks the exports or imports an
//!   interface its route does not grant fails the load, never a request.
//! - **Isolation: no call sees what an earlier call left.** A call runs
//!   either in a fresh instance from the `FilterPre`, or in a *recycled*
//!   one: an instance whose previous call succeeded and that was then put
//!   back, by a reset edgegate builds into the component at load
//!   ([`recycle`]), to the state it had before its first request (memory
//!   and mutable globals copied back from a second memory and shadow
//!   globals no guest instruction can reach; components whose state that
//!   cannot cover, such as runtime table writes, keep fresh instances). A
//!   call that trapped, timed out, grew its memory or left a resource
//!   handle open is never recycled. `server.filter_recycling = false` makes
//!   every call fresh.
//! - **Pre-initialised instances.** That state is not only instantiation's:
//!   a new recycled instance first runs the guest's `phases` export with
//!   no request in its store, then snapshots itself, so what `phases`
//!   built (the SDK's filters parse their config into a `static` there) is
//!   what every request starts from, and no request's data can be in it.
//!   This is Wizer's idea applied at run time, per route: −0.6 µs per
//!   jwt-auth call in process (its config no longer parsed per request),
//!   −1 µs for jwt + rate-limit (`filter_bench`, session 8).
//! - **Why recycle.** A fresh instance costs ≥ 4.3 µs however little the
//!   guest does (bare `Store::new` + instantiate + drop of the no-op, one
//!   thread): resetting its memory on drop (~15% at 128 KiB), copying data
//!   segments in, three core instances per component (module, shim,
//!   fixup), function lookups, store bookkeeping. Research notes
//!   (`wasm-feasibility.md`): fresh instance + call ≈ 19–30 µs pooled
//!   against ≈ 1.4–5 µs for a warm instance. A jwt + rate-limit route at
//!   0.75× a plain route's throughput (≤ 7.8 µs added) is out of reach
//!   with two fresh instances. wasmtime 48 has no reset for component
//!   instances (bytecodealliance/wasmtime#14313 proposes one) and its
//!   introspection (`debug_memory`, `debug_global`) needs guest-debug code
//!   generation, so the reset is generated into the component: it is the
//!   host's code, derived from the module's own data and global sections,
//!   so a guest cannot skip or weaken it (trusting guests to clean up, as
//!   `wasmtime serve` does for WASIp3, would let one tenant's request see
//!   another's data). Measured (`filter_bench`, one thread, µs per
//!   request, fresh → recycled): no-op 9.4 → 4.2, jwt ES256 + rate-limit
//!   20.5 → 11.5, jwt + rate-limit + headers 30.1 → 15.2. The reset itself
//!   copies back, from the saved state, the 1 KiB granules of memory the
//!   call may have written (the module is instrumented to mark them:
//!   guest stores, bulk memory operations, and host writes through
//!   `realloc` and result pointers; [`recycle`]) and the globals. Until
//!   session 9 it copied the whole memory, 64 KiB for the first-party
//!   header filters, which `perf` showed to be ~0.85 µs per call through
//!   the proxy, the largest single cost of a recycled call. And it runs
//!   inside the call's own post-return function, not as a second call
//!   into the instance. Both together: no-op 2.0 → 1.3 µs, jwt ES256 +
//!   rate-limit 7.4 → 6.2, the three-filter chain 9.3–10.6 → 7.3
//!   (`filter_bench`, session 9). A recycled instance never goes back to
//!   the pool, so its memory is
//!   never decommitted (no `madvise`, no TLB shootdown on other threads).
//!   Up to four reset instances wait per route filter, at
//!   most half the pool over all filters, so fresh instances always find a
//!   slot. Measured and rejected earlier for fresh instances:
//!   `pagemap_scan` (the ioctl costs what it saves), copy-on-write images
//!   (within noise in process, worse on several threads in the research
//!   runs).
//! - **Fresh instances** (the first call on each worker, components without
//!   a reset, `filter_recycling = false`): every call gets a new `Store`
//!   and instance from the `FilterPre`. Measured here (`cargo run
//!   --release -p edgegate --example filter_bench`, one thread, whole
//!   request phase): no-op filter 13.7 µs with Rust's default 1 MiB guest
//!   stack, **6.7 µs** with a 64 KiB stack — the stack sits at the bottom
//!   of linear memory, so a 1 MiB stack put the memory a call touches
//!   outside the pool's 256 KiB resident window and every call paid page
//!   faults; jwt-auth 30.5 → 11.9 µs, the jwt + rate-limit + headers chain
//!   91 → 30 µs. `edgegate filter new` crates link with a 64 KiB stack,
//!   the first-party header filters with 16 KiB (below).
//! - **A guest's memory: size it to never grow.** Resetting an instance
//!   zeroes its whole accessible memory (no dirty-page tracking), and a
//!   memory that grew past its initial size is shrunk back with `mprotect`
//!   on the next instantiation and grown again by the next call. Measured
//!   with `filter_bench N all COOKIE_BYTES` (session 5): a guest whose heap
//!   outgrows its initial memory costs **~9 µs more per call** (jwt-auth
//!   11 → 21 µs). With a 64 KiB stack the first-party filters started at
//!   128 KiB and stayed there up to ~30 KiB of request headers (the host
//!   copies the whole request head in). With a 16 KiB stack they start at
//!   one 64 KiB page, which halves what every reset of a recycled instance
//!   rewrites: −0.5 µs per filter call in process (/jwt-rl added 13.9 →
//!   10.0 µs through the proxy with the other session-8 changes, `ab.py`)
//!   (session 5 measured it within noise when every call was fresh and the
//!   pool did the zeroing). It moves the cliff to ~13 KiB of request
//!   headers, past which a call runs fresh. `filter_bench` prints each filter's peak
//!   memory. A call that grew its memory is also never recycled (a wasm
//!   memory cannot shrink), so a filter that grows on most requests loses
//!   recycling too.
//! - **A head is one buffer** (`field-map` in the WIT, `apply::request_head`):
//!   the canonical ABI lowers each string or list into a guest with its own
//!   call into the guest's `realloc`, so a head passed as records cost two
//!   guest calls per header per filter (~80 ns each with the host's
//!   copies: `filter_bench` with 20 extra headers, 1.4 → 4.7 µs for a
//!   no-op). Serialized once by the host (a count, a length index, the
//!   bytes; Proxy-Wasm's layout) it costs one. Session 10, `ab.py
//!   --browser-headers` (a browser's twelve extra headers): /jwt-rl added
//!   10.3 → 8.4 µs, a no-op 3.0 → 1.9; with wrk's two headers the no-op
//!   went 1.9 → 1.3 and /jwt-rl moved within noise. A filter then decodes
//!   only what it reads (SDK `Request::header`).
//! - **One export per call**: `bindgen!`'s `FilterPre::instantiate_async`
//!   looks up and type-checks all four exports for every instance; a call
//!   here looks up only the export it runs, by an index resolved at load
//!   (−0.2–0.4 µs per filter in process).
//! - **Pooling tuned for several threads**: the default pooling allocator
//!   decommits with `madvise` per instance, which costs a TLB shootdown per
//!   request once more than one thread runs (≈ 100 µs/request measured on 2
//!   threads). Keeping 256 KiB resident, disabling copy-on-write images (small
//!   guests) and batching decommits brought that to ≈ 33 µs.
//! - **Async calls with an epoch callback**: guests run on fibers; every tick
//!   the callback either yields to the Pingora worker (so a spinning guest
//!   never starves other requests on the thread) or, past the route's CPU
//!   deadline, ends the call. Memory is capped per store by `StoreLimits`
//!   (growth beyond the cap traps). A trapped instance is dropped, never
//!   recycled.
//! - **Capabilities by linking**: `log`, `clock` and `context` are always
//!   linked; `rate-limit` and `crypto` only when the route grants the filter
//!   buckets or key sets, and then only those are reachable.
//! - WASI is linked because Rust `std` guests import `wasi:cli` (stdio,
//!   exit) and `wasi:io`; the context has no preopened files, no network,
//!   no environment, and stdio goes nowhere.

mod bindings;
pub mod keys;
pub mod recycle;

use crate::metrics::Metrics;
use crate::ratelimit::{self, RateLimiters};
use bindings::types::{self as wit};
use keys::{KeyRing, VerifyError};
use policies::{FilterSource, FilterSpec, OnError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, HasSelf, InstancePre, Lift, Linker, Lower,
    ResourceTable,
};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use bindings::types::Phases;

/// Component instances the pool holds at once (concurrent filter calls).
const POOL_INSTANCES: u32 = 256;
/// The largest memory cap a route may give a filter.
pub const MAX_FILTER_MEMORY: usize = 256 << 20;
/// Log lines a filter may write per call.
const LOG_BUDGET: u32 = 32;

/// Why a filter could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FilterLoadError {
    /// The component file could not be read.
    #[error("filter `{name}`: cannot read {path}: {reason}")]
    Read {
        /// Filter name.
        name: String,
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Compilation, linking or the load-time `phases()` call failed.
    #[error("filter `{name}` ({path}): {reason}")]
    Invalid {
        /// Filter name.
        name: String,
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key set failed to load.
    #[error("{0}")]
    Keys(#[from] keys::KeyLoadError),
    /// The engine could not be built.
    #[error("wasm engine: {0}")]
    Engine(String),
}

/// How a filter call failed; counted by kind in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Past the CPU deadline.
    Timeout,
    /// Past the memory cap.
    OutOfMemory,
    /// Trapped (panic, unreachable, bad memory access...).
    Trap,
    /// Answered something invalid (bad status, bad header).
    BadAnswer,
    /// No free instance slot.
    Overloaded,
}

impl FailureKind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::Trap => "trap",
            FailureKind::BadAnswer => "bad_answer",
            FailureKind::Overloaded => "overloaded",
        }
    }
}

/// A filter call that failed, after its route's `on_error` was applied.
#[derive(Debug, Clone)]
pub struct FilterFailure {
    /// The filter's name.
    pub filter: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// Details for the log.
    pub detail: String,
}

struct DeadlineExceeded;

impl std::fmt::Debug for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("filter exceeded its CPU deadline")
    }
}
impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("filter exceeded its CPU deadline")
    }
}
impl std::error::Error for DeadlineExceeded {}

/// A linear memory refused growth: past the filter's `memory` cap, or
/// past what the pool's slot holds. The call traps with this error (the
/// limits trap on a failed grow), so failures are classified by type.
#[derive(Debug)]
struct MemoryCapExceeded {
    /// The size asked for, when the limiter refused it.
    desired: Option<usize>,
}

impl std::fmt::Display for MemoryCapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.desired {
            Some(bytes) => write!(
                f,
                "filter memory refused growth to {bytes} bytes (its limit)"
            ),
            None => f.write_str("filter memory refused growth (its pool slot is full)"),
        }
    }
}
impl std::error::Error for MemoryCapExceeded {}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// The process-wide wasmtime engine and its epoch ticker.
pub struct FilterEngine {
    engine: Engine,
    /// By the source's SHA-256 and whether recycling was asked for.
    compiled: Mutex<HashMap<([u8; 32], bool), Compiled>>,
}

/// A compiled filter component.
#[derive(Clone)]
struct Compiled {
    component: Component,
    /// Why it runs in fresh instances although recycling was asked for
    /// (`None`: it was not asked for, or the component has a verified reset).
    fresh_only: Option<String>,
    /// Whether it carries the reset [`recycle::instrument`] built in.
    resettable: bool,
    /// Its exports whose post-return resets ([`recycle::Instrumented`]).
    folded: Vec<String>,
}

fn ticker(engine: Weak<FilterEngine>) {
    // One atomic increment per millisecond; stops when the engine is gone.
    while let Some(e) = engine.upgrade() {
        e.engine.increment_epoch();
        drop(e);
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl FilterEngine {
    /// The shared engine (built on first use).
    pub fn shared() -> Result<Arc<FilterEngine>, FilterLoadError> {
        static ENGINE: OnceLock<Result<Arc<FilterEngine>, String>> = OnceLock::new();
        ENGINE
            .get_or_init(|| {
                let engine = Self::build().map_err(|e| e.to_string())?;
                let fe = Arc::new(FilterEngine {
                    engine,
                    compiled: Mutex::new(HashMap::new()),
                });
                let weak = Arc::downgrade(&fe);
                std::thread::Builder::new()
                    .name("wasm-epoch".into())
                    .spawn(move || ticker(weak))
                    .map_err(|e| e.to_string())?;
                Ok(fe)
            })
            .clone()
            .map_err(FilterLoadError::Engine)
    }

    fn build() -> wasmtime::Result<Engine> {
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size(MAX_FILTER_MEMORY)
            // A recycled filter's state copy is a second memory.
            .max_memories_per_module(2)
            .linear_memory_keep_resident(recycle::MAX_RESET_BYTES as usize)
            .table_keep_resident(256 << 10)
            .async_stack_keep_resident(256 << 10)
            .decommit_batch_size(32);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .wasm_multi_memory(true)
            .epoch_interruption(true)
            .memory_init_cow(false)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        if std::env::var_os("EDGEGATE_WASM_PERFMAP").is_some() {
            // `perf record` then names guest functions (/tmp/perf-PID.map).
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config)
    }

    /// Compiles `bytes` (or returns the component compiled from identical
    /// bytes before), using `cache_dir` for precompiled artifacts. With
    /// `recycle`, the component gets a verified reset built in when it can
    /// ([`recycle::instrument`]).
    fn component(
        &self,
        bytes: &[u8],
        cache_dir: Option<&Path>,
        recycle: bool,
    ) -> wasmtime::Result<Compiled> {
        let hash = sha256(bytes);
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(hash, recycle))
        {
            return Ok(c.clone());
        }
        let instrumented = recycle.then(|| {
            recycle::instrument(bytes, &CALL_EXPORTS).and_then(|i| {
                // Cached by what was compiled: an artifact of an older
                // instrumentation of the same source is never taken for it.
                self.compile(
                    &i.bytes,
                    &sha256(&i.bytes),
                    recycle::ARTIFACT_TAG,
                    cache_dir,
                )
                .map(|component| (component, i.folded))
                .map_err(|e| format!("the instrumented component does not compile: {e:#}"))
            })
        });
        let compiled = match instrumented {
            Some(Ok((component, folded))) => Compiled {
                component,
                fresh_only: None,
                resettable: true,
                folded,
            },
            not => Compiled {
                component: self.compile(bytes, &hash, "", cache_dir)?,
                fresh_only: not.and_then(Result::err),
                resettable: false,
                folded: Vec::new(),
            },
        };
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((hash, recycle), compiled.clone());
        Ok(compiled)
    }

    /// Compiles `bytes`, from or into the artifact cache when there is one
    /// (`tag` tells instrumented artifacts of a source from plain ones).
    fn compile(
        &self,
        bytes: &[u8],
        hash: &[u8; 32],
        tag: &str,
        cache_dir: Option<&Path>,
    ) -> wasmtime::Result<Component> {
        match cache_dir {
            Some(dir) => self.component_cached(bytes, hash, tag, dir),
            None => Component::new(&self.engine, bytes),
        }
    }

    fn component_cached(
        &self,
        bytes: &[u8],
        hash: &[u8; 32],
        tag: &str,
        dir: &Path,
    ) -> wasmtime::Result<Component> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{hex}{tag}-{:016x}.cwasm", h.finish()));
        if path.exists() {
            // SAFETY: the file is one this process family wrote below, named by
            // the SHA-256 of its source and the engine's compatibility hash; the
            // cache directory is the operator's (not tenant-writable).
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize_file(&self.engine, &path) };
            match loaded {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable cached filter artifact")
                }
            }
        }
        let artifact = self.engine.precompile_component(bytes)?;
        if std::fs::create_dir_all(dir).is_ok() {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, &artifact)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .is_err()
            {
                tracing::warn!(dir = %dir.display(), "cannot write the filter cache");
            }
        }
        // SAFETY: `artifact` was produced just now by this engine.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, &artifact)? };
        Ok(component)
    }
}

/// The WIT package this host implements.
pub const CONTRACT: &str = "edgegate:filter@0.2.0";

/// The other version of the contract a component imports, if any
/// (`edgegate:filter@0.1.0`...), so that loading it says so rather than
/// naming a missing import.
fn contract_mismatch(component: &Component, engine: &wasmtime::Engine) -> Option<String> {
    let (package, version) = CONTRACT.split_once('@')?;
    component
        .component_type()
        .imports(engine)
        .find_map(|(name, _)| {
            let (interface, v) = name
                .strip_prefix(package)?
                .strip_prefix('/')?
                .split_once('@')?;
            (v != version && !interface.is_empty()).then(|| format!("{package}@{v}"))
        })
}

/// Facts about the request, readable through `edgegate:filter/context`.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// TCP peer.
    pub client_ip: String,
    /// TLS SNI.
    pub tls_sni: Option<String>,
    /// Route name.
    pub route: String,
    /// PoP name.
    pub pop: String,
    /// Request id.
    pub request_id: String,
    /// Set by an earlier filter.
    pub principal: Option<String>,
    /// Set by earlier filters.
    pub labels: Vec<(String, String)>,
    /// Cache-key parts added by filters.
    pub cache_key: Vec<String>,
}

/// wasmtime's `StoreLimits`, remembering the largest linear memory the
/// instance asked for (reported as `edgegate_filter_memory_peak_bytes`) and
/// whether a memory grew past its initial size during the call
/// (`edgegate_filter_memory_grows_total`).
struct PeakLimits {
    inner: StoreLimits,
    peak: usize,
    grew: bool,
}

impl wasmtime::ResourceLimiter for PeakLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self
            .inner
            .memory_growing(current, desired, maximum)
            .map_err(|e| {
                e.context(MemoryCapExceeded {
                    desired: Some(desired),
                })
            })?;
        if allowed {
            self.peak = self.peak.max(desired);
        }
        // Creating a memory asks for its initial size from 0.
        self.grew |= current > 0 && desired > current;
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner
            .memory_grow_failed(error)
            .map_err(|e| e.context(MemoryCapExceeded { desired: None }))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Per-store data: WASI plumbing, limits, and what the imports may reach.
pub struct HostState {
    /// Built on a guest's first WASI call (Rust `std` links stdio and exit
    /// but filters rarely call them): a `WasiCtx` seeds random generators
    /// and boxes clocks and stdio, ~0.2 µs a call otherwise wasted.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    limits: PeakLimits,
    facts: Arc<RequestFacts>,
    filter: Arc<FilterShared>,
    logs_left: u32,
    deadline: Instant,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| WasiCtx::builder().build()),
            table: &mut self.table,
        }
    }
}

impl bindings::edgegate::filter::types::Host for HostState {}

impl bindings::edgegate::filter::log::Host for HostState {
    fn write(&mut self, level: wit::LogLevel, message: String) {
        if self.logs_left == 0 {
            return;
        }
        self.logs_left -= 1;
        let message: String = message.chars().take(2048).collect();
        let (route, filter) = (&self.facts.route, &self.filter.name);
        match level {
            wit::LogLevel::Debug => {
                tracing::debug!(target: "edgegate::filter", route, filter, "{message}")
            }
            wit::LogLevel::Info => {
                tracing::info!(target: "edgegate::filter", route, filter, "{message}")
            }
            wit::LogLevel::Warn => {
                tracing::warn!(target: "edgegate::filter", route, filter, "{message}")
            }
            wit::LogLevel::Error => {
                tracing::error!(target: "edgegate::filter", route, filter, "{message}")
            }
        }
    }
}

impl bindings::edgegate::filter::clock::Host for HostState {
    fn now_unix_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

impl bindings::edgegate::filter::context::Host for HostState {
    fn client_ip(&mut self) -> String {
        self.facts.client_ip.clone()
    }
    fn tls_sni(&mut self) -> Option<String> {
        self.facts.tls_sni.clone()
    }
    fn route_name(&mut self) -> String {
        self.facts.route.clone()
    }
    fn pop_name(&mut self) -> String {
        self.facts.pop.clone()
    }
    fn request_id(&mut self) -> String {
        self.facts.request_id.clone()
    }
    fn principal(&mut self) -> Option<String> {
        self.facts.principal.clone()
    }
    fn label(&mut self, key: String) -> Option<String> {
        self.facts
            .labels
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }
    fn config(&mut self) -> String {
        self.filter.config_json.clone()
    }
}

impl bindings::edgegate::filter::rate_limit::Host for HostState {
    fn check(
        &mut self,
        bucket: String,
        key: String,
        cost: u32,
    ) -> Result<
        bindings::edgegate::filter::rate_limit::Outcome,
        bindings::edgegate::filter::rate_limit::CheckError,
    > {
        use bindings::edgegate::filter::rate_limit as rl;
        if !self.filter.rate_limits.contains(&bucket) {
            return Err(rl::CheckError::UnknownBucket);
        }
        let state = |s: ratelimit::BucketState| rl::BucketState {
            limit: s.limit,
            remaining: s.remaining,
            reset_after_ms: s.reset_after.as_millis() as u64,
        };
        match self.filter.limiters.check(&bucket, &key, cost) {
            Ok(ratelimit::Outcome::Allowed(s)) => Ok(rl::Outcome::Allowed(state(s))),
            Ok(ratelimit::Outcome::Limited(s, retry)) => {
                Ok(rl::Outcome::Limited(rl::LimitedState {
                    state: state(s),
                    retry_after_ms: (retry.as_millis() as u64).max(1),
                }))
            }
            Err(ratelimit::CheckError::UnknownBucket) => Err(rl::CheckError::UnknownBucket),
            Err(ratelimit::CheckError::InvalidCost) => Err(rl::CheckError::InvalidCost),
        }
    }
}

impl bindings::edgegate::filter::crypto::Host for HostState {
    fn verify(
        &mut self,
        key_set: String,
        key_id: Option<String>,
        algorithm: String,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<(), bindings::edgegate::filter::crypto::VerifyError> {
        use bindings::edgegate::filter::crypto::VerifyError as W;
        if !self.filter.key_sets.contains(&key_set) {
            return Err(W::UnknownKeySet);
        }
        self.filter
            .keys
            .verify(
                &key_set,
                key_id.as_deref(),
                &algorithm,
                &message,
                &signature,
            )
            .map_err(|e| match e {
                VerifyError::UnknownKeySet => W::UnknownKeySet,
                VerifyError::UnknownKey => W::UnknownKey,
                VerifyError::UnsupportedAlgorithm => W::UnsupportedAlgorithm,
                VerifyError::KeysUnavailable => W::KeysUnavailable,
                VerifyError::BadSignature => W::BadSignature,
            })
    }
}

/// What every call of one route filter shares.
struct FilterShared {
    name: String,
    config_json: String,
    rate_limits: Vec<String>,
    key_sets: Vec<String>,
    limiters: RateLimiters,
    keys: KeyRing,
}

/// Metric handles of one route filter, resolved on its first call so the
/// request path does no label hashing.
pub(crate) struct FilterMetrics {
    instantiate: prometheus::Histogram,
    fresh: prometheus::IntCounter,
    recycled: prometheus::IntCounter,
    run: prometheus::Histogram,
    memory_peak: prometheus::Histogram,
    memory_grows: prometheus::IntCounter,
    /// continue, edit, respond.
    pub(crate) decisions: [prometheus::IntCounter; 3],
    /// By [`FailureKind`] in declaration order.
    pub(crate) errors: [prometheus::IntCounter; 5],
}

impl FilterMetrics {
    fn new(m: &Metrics, route: &str, filter: &str) -> Self {
        let d = |x: &str| m.filter_decisions.with_label_values(&[route, filter, x]);
        let e = |k: FailureKind| {
            m.filter_errors
                .with_label_values(&[route, filter, k.as_str()])
        };
        Self {
            instantiate: m.filter_instantiate.with_label_values(&[filter]),
            fresh: m.filter_instances.with_label_values(&[filter, "fresh"]),
            recycled: m.filter_instances.with_label_values(&[filter, "recycled"]),
            run: m.filter_run.with_label_values(&[filter]),
            memory_peak: m.filter_memory_peak.with_label_values(&[filter]),
            memory_grows: m.filter_memory_grows.with_label_values(&[route, filter]),
            decisions: [d("continue"), d("edit"), d("respond")],
            errors: [
                e(FailureKind::Timeout),
                e(FailureKind::OutOfMemory),
                e(FailureKind::Trap),
                e(FailureKind::BadAnswer),
                e(FailureKind::Overloaded),
            ],
        }
    }

    /// The error counter of `kind`.
    pub(crate) fn error(&self, kind: FailureKind) -> &prometheus::IntCounter {
        let i = match kind {
            FailureKind::Timeout => 0,
            FailureKind::OutOfMemory => 1,
            FailureKind::Trap => 2,
            FailureKind::BadAnswer => 3,
            FailureKind::Overloaded => 4,
        };
        &self.errors[i]
    }
}

/// One filter on one route, ready to run.
pub struct LoadedFilter {
    /// Its spec from the config.
    pub spec: FilterSpec,
    /// The phases it asked for at load.
    pub phases: Phases,
    pre: bindings::FilterPre<HostState>,
    exports: PhaseExports,
    /// The verified reset and the snapshot ([`recycle`]), when this
    /// filter's instances are recycled.
    recycling: Option<Recycling>,
    warm: WarmPool,
    shared: Arc<FilterShared>,
    engine: Arc<FilterEngine>,
    route: String,
    metrics: OnceLock<FilterMetrics>,
}

/// What a waiting instance's store holds in place of a request's facts.
fn idle_facts() -> Arc<RequestFacts> {
    static IDLE: OnceLock<Arc<RequestFacts>> = OnceLock::new();
    Arc::clone(IDLE.get_or_init(|| Arc::new(RequestFacts::default())))
}

/// Where a recycled filter's reset and snapshot exports are, and which
/// phase calls reset on their own ([`recycle::Instrumented::folded`]).
struct Recycling {
    reset: ComponentExportIndex,
    snapshot: ComponentExportIndex,
    /// By [`Call`]: the export's post-return resets, so the host does not.
    folded: [bool; 3],
}

/// The phase exports a request calls, indexing [`PhaseExports::calls`].
#[derive(Clone, Copy)]
enum Call {
    Request = 0,
    Response = 1,
    ResponseBody = 2,
}

/// The exports [`Call`] names, in its order. Their post-returns get the
/// reset folded in ([`recycle::instrument`]).
const CALL_EXPORTS: [&str; 3] = ["on-request", "on-response", "on-response-body"];

/// An instance that finished a call and was reset, with its store.
struct Warm {
    store: Store<HostState>,
    instance: wasmtime::component::Instance,
    funcs: InstanceFuncs,
}

/// An instance's exports as the host calls them, each looked up once.
#[derive(Default)]
struct InstanceFuncs {
    /// By [`Call`].
    calls: [Option<wasmtime::component::Func>; 3],
    /// The reset export, type-checked.
    reset: Option<wasmtime::component::TypedFunc<(), ()>>,
}

/// Warm instances kept per route filter: one per worker thread is what a
/// steady load uses; a few more absorb bursts. Each holds pool slots.
const WARM_PER_FILTER: usize = 4;
/// Warm instances kept over all filters: half the pool, so a call can
/// always instantiate fresh.
const WARM_BUDGET: usize = POOL_INSTANCES as usize / 2;
/// Warm instances held now, over all filters.
static WARM_TOTAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A route filter's reset instances, ready for the next call.
#[derive(Default)]
struct WarmPool(Mutex<Vec<Warm>>);

impl WarmPool {
    fn take(&self) -> Option<Warm> {
        let warm = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if warm.is_some() {
            WARM_TOTAL.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        warm
    }

    /// Keeps `warm` if this filter and the process have room; otherwise it
    /// is dropped (after the lock is released: dropping a store resets its
    /// memory).
    fn put(&self, warm: Warm) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < WARM_PER_FILTER {
            if WARM_TOTAL.fetch_add(1, Relaxed) < WARM_BUDGET {
                pool.push(warm);
                return;
            }
            WARM_TOTAL.fetch_sub(1, Relaxed);
        }
        drop(pool);
        drop(warm);
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        let held = self.0.get_mut().unwrap_or_else(|p| p.into_inner()).len();
        WARM_TOTAL.fetch_sub(held, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a filter's phase exports are, resolved once at load.
///
/// `bindgen!`'s `FilterPre::instantiate_async` looks up and type-checks all
/// four exports on every instantiation, though a request calls one of
/// them; a request here fetches and checks only the export it calls, by an
/// index found once (measured: `loadtest/RESULTS.md`).
struct PhaseExports {
    phases: ComponentExportIndex,
    /// By [`Call`].
    calls: [ComponentExportIndex; 3],
}

impl PhaseExports {
    fn resolve(pre: &InstancePre<HostState>) -> Result<Self, String> {
        let index = |name: &str| {
            pre.component()
                .get_export_index(None, name)
                .ok_or_else(|| format!("it does not export `{name}`"))
        };
        Ok(Self {
            phases: index("phases")?,
            calls: [
                index(CALL_EXPORTS[0])?,
                index(CALL_EXPORTS[1])?,
                index(CALL_EXPORTS[2])?,
            ],
        })
    }
}

/// The filters of one route, in request order.
#[derive(Default, Clone)]
pub struct FilterChain {
    /// The filters.
    pub filters: Vec<Arc<LoadedFilter>>,
}

impl FilterChain {
    /// Whether any filter takes part in `phase`.
    fn has_phase(&self, phase: Phases) -> bool {
        self.filters.iter().any(|f| f.phases.contains(phase))
    }

    /// Whether any filter runs on request heads.
    pub fn has_request_phase(&self) -> bool {
        self.has_phase(Phases::REQUEST_HEAD)
    }

    /// Whether any filter runs on response heads.
    pub fn has_response_phase(&self) -> bool {
        self.has_phase(Phases::RESPONSE_HEAD)
    }

    /// Whether any filter transforms whole response bodies (the route's
    /// responses are then buffered; routes without one never are).
    pub fn has_body_phase(&self) -> bool {
        self.has_phase(Phases::RESPONSE_BODY)
    }

    /// The largest body the route's body filters can take: half the
    /// smallest memory cap among them (the guest holds the body and its
    /// output), at most [`MAX_TRANSFORM_BODY`].
    pub fn body_limit(&self) -> usize {
        self.filters
            .iter()
            .filter(|f| f.phases.contains(Phases::RESPONSE_BODY))
            .map(|f| f.spec.memory_bytes / 2)
            .min()
            .unwrap_or(0)
            .min(MAX_TRANSFORM_BODY)
    }
}

/// CPU deadline of the `phases` call made when a filter loads.
const LOAD_CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// The largest response body handed to a body filter.
pub const MAX_TRANSFORM_BODY: usize = 64 << 20;

/// Everything filters of one config generation share.
pub struct FilterSet {
    engine: Option<Arc<FilterEngine>>,
    /// Rate-limit buckets (kept across reloads when unchanged).
    pub limiters: RateLimiters,
    /// Key sets (remote ones refreshed in the background).
    pub keys: KeyRing,
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_filters.rs"));
}

/// The first-party filters built into this binary.
pub fn embedded_modules() -> impl Iterator<Item = &'static str> {
    embedded::EMBEDDED.iter().map(|(name, _)| *name)
}

/// The bytes of a filter's component and where they came from: a tenant
/// file, a first-party module installed in the filter directory (which
/// overrides the built-in one), or the module built into this binary.
fn component_bytes(
    spec: &FilterSpec,
    filter_dir: &Path,
) -> Result<(Vec<u8>, PathBuf), FilterLoadError> {
    let read = |path: PathBuf| match std::fs::read(&path) {
        Ok(b) => Ok((b, path)),
        Err(e) => Err(FilterLoadError::Read {
            name: spec.name.clone(),
            path,
            reason: e.to_string(),
        }),
    };
    match &spec.source {
        FilterSource::Path(p) => read(p.clone()),
        FilterSource::Module(m) => {
            let dir = std::env::var_os("EDGEGATE_FILTER_DIR")
                .map_or_else(|| filter_dir.to_path_buf(), PathBuf::from);
            let installed = dir.join(format!("{}.wasm", m.replace('-', "_")));
            if installed.is_file() {
                return read(installed);
            }
            match embedded::EMBEDDED.iter().find(|(name, _)| name == m) {
                Some((_, bytes)) => Ok((bytes.to_vec(), PathBuf::from(format!("<built-in {m}>")))),
                None => Err(FilterLoadError::Read {
                    name: spec.name.clone(),
                    path: installed,
                    reason: format!(
                        "no first-party filter `{m}` (built in: {})",
                        embedded_modules().collect::<Vec<_>>().join(", ")
                    ),
                }),
            }
        }
    }
}

/// The filter's inline config with its `config_file` merged over it, as JSON.
fn merged_config(spec: &FilterSpec) -> Result<String, String> {
    let Some(path) = &spec.config_file else {
        return Ok(spec.config_json.clone());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config_file {}: {e}", path.display()))?;
    let overlay: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("config_file {}: {e}", path.display()))?
    } else {
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("config_file {}: {e}", path.display()))?;
        serde_json::to_value(table).map_err(|e| e.to_string())?
    };
    let serde_json::Value::Object(overlay) = overlay else {
        return Err(format!(
            "config_file {}: expected a table/object at the top",
            path.display()
        ));
    };
    let mut base: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&spec.config_json).map_err(|e| e.to_string())?;
    base.extend(overlay);
    serde_json::to_string(&base).map_err(|e| e.to_string())
}

fn run_blocking<F: std::future::Future + Send>(f: F) -> Result<F::Output, String>
where
    F::Output: Send,
{
    // Load-time calls run on a fresh thread with its own small runtime, so
    // loading works the same from `main`, a blocking task or a test.
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map(|rt| rt.block_on(f))
                .map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "load thread panicked".to_string())?
    })
}

impl FilterSet {
    /// Builds the shared parts of a generation; no engine is created when no
    /// route has filters.
    pub fn new(
        config: &policies::Config,
        previous: Option<&FilterSet>,
    ) -> Result<Self, FilterLoadError> {
        let any = config.routes.routes().iter().any(|r| !r.filters.is_empty());
        let keys = KeyRing::load(config.key_sets.values(), previous.map(|p| &p.keys))?;
        if !keys.unavailable().is_empty() {
            // First fetch of new remote key sets, bounded by the client timeout.
            let _ = run_blocking(keys.fetch_missing());
        }
        Ok(Self {
            engine: if any {
                Some(FilterEngine::shared()?)
            } else {
                None
            },
            limiters: RateLimiters::new(config.rate_limits.values(), previous.map(|p| &p.limiters)),
            keys,
        })
    }

    /// Loads the chain of one route.
    pub fn chain(
        &self,
        route: &policies::Route,
        config: &policies::Config,
    ) -> Result<FilterChain, FilterLoadError> {
        let mut filters = Vec::new();
        for spec in &route.filters {
            filters.push(Arc::new(self.load(spec, &route.name, config)?));
        }
        Ok(FilterChain { filters })
    }

    fn load(
        &self,
        spec: &FilterSpec,
        route: &str,
        config: &policies::Config,
    ) -> Result<LoadedFilter, FilterLoadError> {
        let engine = self
            .engine
            .clone()
            .ok_or_else(|| FilterLoadError::Engine("no engine for a config with filters".into()))?;
        let (bytes, path) = component_bytes(spec, &config.server.filter_dir)?;
        let invalid = |reason: String| FilterLoadError::Invalid {
            name: spec.name.clone(),
            path: path.clone(),
            reason,
        };
        let compiled = engine
            .component(
                &bytes,
                config.server.filter_cache_dir.as_deref(),
                config.server.filter_recycling,
            )
            .map_err(|e| invalid(format!("not a valid component: {e:#}")))?;
        if let Some(why) = &compiled.fresh_only {
            tracing::info!(route, filter = %spec.name, "filter runs in fresh instances: no verified reset ({why})");
        }
        let component = compiled.component;
        if let Some(other) = contract_mismatch(&component, &engine.engine) {
            return Err(invalid(format!(
                "it was built against `{other}`; this gateway runs filters built against \
                 `{CONTRACT}`: rebuild it with the current edgegate-filter-sdk"
            )));
        }

        let mut linker: Linker<HostState> = Linker::new(&engine.engine);
        let link = |r: wasmtime::Result<()>| r.map_err(|e| invalid(format!("{e:#}")));
        link(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        use bindings::edgegate::filter as f;
        link(f::types::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        ))?;
        link(f::log::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        ))?;
        link(f::clock::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        ))?;
        link(f::context::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        ))?;
        if !spec.rate_limits.is_empty() {
            link(
                f::rate_limit::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s),
            )?;
        }
        if !spec.key_sets.is_empty() {
            link(f::crypto::add_to_linker::<HostState, HasSelf<HostState>>(
                &mut linker,
                |s| s,
            ))?;
        }
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            let msg = format!("{e:#}");
            if msg.contains("rate-limit") {
                invalid(format!("it imports `edgegate:filter/rate-limit` but the route grants it no `rate_limits` ({msg})"))
            } else if msg.contains("crypto") {
                invalid(format!("it imports `edgegate:filter/crypto` but the route grants it no `key_sets` ({msg})"))
            } else {
                invalid(format!("cannot link: {msg}"))
            }
        })?;
        let pre = bindings::FilterPre::new(instance_pre).map_err(|e| {
            invalid(format!(
                "it does not export the `edgegate:filter/filter` world: {e:#}"
            ))
        })?;
        let exports = PhaseExports::resolve(pre.instance_pre()).map_err(invalid)?;
        let recycling = if compiled.resettable {
            let index = |name: &str| {
                pre.instance_pre()
                    .component()
                    .get_export_index(None, name)
                    .ok_or_else(|| invalid(format!("the instrumented component lost `{name}`")))
            };
            Some(Recycling {
                reset: index(recycle::RESET_EXPORT)?,
                snapshot: index(recycle::SNAPSHOT_EXPORT)?,
                folded: CALL_EXPORTS.map(|name| compiled.folded.iter().any(|f| f == name)),
            })
        } else {
            None
        };
        let config_json = merged_config(spec).map_err(invalid)?;
        let shared = Arc::new(FilterShared {
            name: spec.name.clone(),
            config_json,
            rate_limits: spec.rate_limits.clone(),
            key_sets: spec.key_sets.clone(),
            limiters: self.limiters.clone(),
            keys: self.keys.clone(),
        });
        let mut loaded = LoadedFilter {
            spec: spec.clone(),
            phases: Phases::empty(),
            pre,
            exports,
            recycling,
            warm: WarmPool::default(),
            shared,
            engine,
            route: route.to_string(),
            metrics: OnceLock::new(),
        };
        // Instantiate once now: proves it runs, and reads its phases. This
        // is config load, not a request: a loaded box (a reload while
        // traffic peaks) must not fail it by descheduling the loader past a
        // 20 ms request deadline, so it gets its own, longer one.
        let facts = Arc::new(RequestFacts::default());
        let phases = run_blocking(async {
            let mut store = loaded.store(facts, Instant::now());
            store.data_mut().deadline =
                Instant::now() + LOAD_CALL_DEADLINE.max(loaded.spec.timeout);
            let instance = loaded.pre.instantiate_async(&mut store).await?;
            instance.call_phases(&mut store).await
        })
        .map_err(invalid)?
        .map_err(|e| invalid(format!("calling `phases` failed: {e:#}")))?;
        loaded.phases = phases;
        Ok(loaded)
    }
}

impl LoadedFilter {
    /// A new store for one call that starts at `now`.
    fn store(&self, facts: Arc<RequestFacts>, now: Instant) -> Store<HostState> {
        let state = HostState {
            wasi: None,
            table: ResourceTable::new(),
            limits: PeakLimits {
                inner: StoreLimitsBuilder::new()
                    .memory_size(self.spec.memory_bytes)
                    .instances(64)
                    .tables(64)
                    .memories(8)
                    .trap_on_grow_failure(true)
                    .build(),
                peak: 0,
                grew: false,
            },
            facts,
            filter: Arc::clone(&self.shared),
            logs_left: LOG_BUDGET,
            deadline: now + self.spec.timeout,
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    fn classify(&self, e: &wasmtime::Error) -> FilterFailure {
        // By type, not by wasmtime's wording: the deadline callback and the
        // memory limiter raise our own errors, and the pooling allocator its
        // concurrency error; anything else that stopped a call is a trap.
        let kind = if e.downcast_ref::<DeadlineExceeded>().is_some() {
            FailureKind::Timeout
        } else if e.downcast_ref::<MemoryCapExceeded>().is_some() {
            FailureKind::OutOfMemory
        } else if e
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            FailureKind::Overloaded
        } else {
            FailureKind::Trap
        };
        FilterFailure {
            filter: self.spec.name.clone(),
            kind,
            detail: format!("{e:#}"),
        }
    }

    /// Runs the phase export `call` names, typed `P -> (D,)`, in a
    /// recycled instance when one waits, else a fresh one.
    ///
    /// The export is fetched by its index (once per instance) and not
    /// type-checked again:
    /// `bindings::FilterPre::new` checked every phase export against the WIT
    /// world at load, which is what `bindgen!`'s own calls rely on too, and
    /// saves ~0.15 µs a call. So `P` and `D` must be that export's WIT types:
    /// only [`Self::on_request`], [`Self::on_response`] and
    /// [`Self::on_response_body`] call this, each with its phase's.
    async fn call<P, D>(
        &self,
        facts: Arc<RequestFacts>,
        metrics: &Metrics,
        call: Call,
        args: P,
    ) -> Result<D, FilterFailure>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        D: 'static,
        (D,): ComponentNamedList + Lift + Send + Sync,
    {
        // One clock read starts the call (its deadline, its run time);
        // a fresh instance reads another once instantiated.
        let mut started = Instant::now();
        let (mut store, instance, mut funcs) = match self.warm.take() {
            Some(Warm {
                mut store,
                instance,
                funcs,
            }) => {
                Self::rearm(&mut store, facts, started + self.spec.timeout);
                self.metrics(metrics).recycled.inc();
                (store, instance, funcs)
            }
            None => {
                let (store, instance) = match &self.recycling {
                    Some(recycling) => {
                        let (mut store, instance) = self
                            .preinitialized(recycling, started)
                            .await
                            .map_err(|e| self.classify(&e))?;
                        Self::rearm(&mut store, facts, started + self.spec.timeout);
                        (store, instance)
                    }
                    None => {
                        let mut store = self.store(facts, started);
                        let instance = self
                            .pre
                            .instance_pre()
                            .instantiate_async(&mut store)
                            .await
                            .map_err(|e| self.classify(&e))?;
                        (store, instance)
                    }
                };
                let m = self.metrics(metrics);
                m.fresh.inc();
                let now = Instant::now();
                m.instantiate.observe((now - started).as_secs_f64());
                started = now;
                (store, instance, InstanceFuncs::default())
            }
        };
        let func = match funcs.calls[call as usize] {
            Some(func) => func,
            None => {
                let func = instance
                    .get_func(&mut store, self.exports.calls[call as usize])
                    .ok_or_else(|| FilterFailure {
                        filter: self.spec.name.clone(),
                        kind: FailureKind::Trap,
                        detail: "the phase export is missing from the instance".into(),
                    })?;
                funcs.calls[call as usize] = Some(func);
                func
            }
        };
        // SAFETY: the export's type was checked against `P -> (D,)` at load
        // (see above); a component instance's exports are those of its
        // component.
        #[allow(unsafe_code)]
        let func = unsafe { wasmtime::component::TypedFunc::<P, (D,)>::new_unchecked(func) };
        let out = func
            .call_async(&mut store, args)
            .await
            .map(|(d,)| d)
            .map_err(|e| self.classify(&e));
        self.observe_call(&store, started, metrics);
        if out.is_ok() {
            self.recycle(store, instance, funcs, call).await;
        }
        out
    }

    /// A new instance of a recycled filter, its guest initialised and that
    /// state kept as the one its resets restore: instantiate, run the
    /// guest's `phases` export (where the SDK's filters parse their config),
    /// then snapshot ([`recycle`]). The store holds no request's facts
    /// meanwhile, so nothing of a request can enter the snapshot. A guest
    /// whose `phases` grew its memory or left a handle open is not
    /// snapshotted (its resets restore what instantiation made) and, having
    /// grown, is not recycled.
    async fn preinitialized(
        &self,
        recycling: &Recycling,
        started: Instant,
    ) -> wasmtime::Result<(Store<HostState>, wasmtime::component::Instance)> {
        let mut store = self.store(idle_facts(), started);
        let instance = self
            .pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await?;
        instance
            .get_typed_func::<(), (Phases,)>(&mut store, &self.exports.phases)?
            .call_async(&mut store, ())
            .await?;
        if !store.data().limits.grew && store.data().table.is_empty() {
            instance
                .get_typed_func::<(), ()>(&mut store, &recycling.snapshot)?
                .call_async(&mut store, ())
                .await?;
        }
        Ok((store, instance))
    }

    /// Readies a reset instance's store for a new request: its facts, log
    /// budget and deadline; a new WASI context if the guest asks for one.
    fn rearm(store: &mut Store<HostState>, facts: Arc<RequestFacts>, deadline: Instant) {
        let state = store.data_mut();
        state.facts = facts;
        state.logs_left = LOG_BUDGET;
        state.deadline = deadline;
        state.limits.grew = false;
        state.wasi = None;
        store.set_epoch_deadline(1);
    }

    /// Resets an instance whose `call` succeeded and keeps it for the next
    /// call, unless the call left state the reset cannot take back: a
    /// memory that grew (a wasm memory cannot shrink) or an open resource
    /// handle. A reset that fails (its deadline, a trap) drops it. Where
    /// the export's post-return reset already (`folded`), there is nothing
    /// left to call.
    async fn recycle(
        &self,
        mut store: Store<HostState>,
        instance: wasmtime::component::Instance,
        mut funcs: InstanceFuncs,
        call: Call,
    ) {
        let Some(recycling) = &self.recycling else {
            return;
        };
        if store.data().limits.grew || !store.data().table.is_empty() {
            return;
        }
        if !recycling.folded[call as usize] {
            let reset = match funcs.reset {
                Some(f) => f,
                None => match instance.get_typed_func::<(), ()>(&mut store, &recycling.reset) {
                    Ok(f) => *funcs.reset.insert(f),
                    Err(_) => return,
                },
            };
            if reset.call_async(&mut store, ()).await.is_err() {
                return;
            }
        }
        // The request's facts are not kept while the instance waits.
        store.data_mut().facts = idle_facts();
        self.warm.put(Warm {
            store,
            instance,
            funcs,
        });
    }

    /// Runs `on-request` in a fresh or recycled instance.
    pub(crate) async fn on_request(
        &self,
        facts: Arc<RequestFacts>,
        head: &wit::RequestHead,
        metrics: &Metrics,
    ) -> Result<wit::RequestDecision, FilterFailure> {
        self.call(facts, metrics, Call::Request, (head,)).await
    }

    /// Runs `on-response` in a fresh or recycled instance.
    pub(crate) async fn on_response(
        &self,
        facts: Arc<RequestFacts>,
        head: &wit::RequestHead,
        response: &wit::ResponseHead,
        metrics: &Metrics,
    ) -> Result<wit::ResponseDecision, FilterFailure> {
        self.call(facts, metrics, Call::Response, (head, response))
            .await
    }

    /// Runs `on-response-body` in a fresh or recycled instance.
    pub(crate) async fn on_response_body(
        &self,
        facts: Arc<RequestFacts>,
        head: &wit::RequestHead,
        response: &wit::ResponseHead,
        body: &[u8],
        metrics: &Metrics,
    ) -> Result<wit::BodyDecision, FilterFailure> {
        self.call(facts, metrics, Call::ResponseBody, (head, response, body))
            .await
    }

    /// Records a finished call's run time and peak linear memory.
    fn observe_call(&self, store: &Store<HostState>, started: Instant, metrics: &Metrics) {
        let m = self.metrics(metrics);
        m.run.observe(started.elapsed().as_secs_f64());
        let limits = &store.data().limits;
        m.memory_peak.observe(limits.peak as f64);
        if limits.grew {
            m.memory_grows.inc();
        }
    }

    /// Its metric handles (resolved on first use; a loaded filter belongs to
    /// one gateway, so to one registry).
    pub(crate) fn metrics(&self, metrics: &Metrics) -> &FilterMetrics {
        self.metrics
            .get_or_init(|| FilterMetrics::new(metrics, &self.route, &self.spec.name))
    }

    /// Whether a failure of this filter fails the request.
    pub fn fails_closed(&self) -> bool {
        self.spec.on_error == OnError::FailClosed
    }
}

pub mod apply;
pub mod local;
pub mod scaffold;
