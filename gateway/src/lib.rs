//! edgegate: an edge gateway built on Pingora.
//!
//! The crate is organised by concept; the binary (`main.rs`) only calls
//! [`cli::main`], and tests boot the gateway in-process through
//! [`state::Shared`] and [`server::run`].
//!
//! - [`state`]: config loading, immutable generations, reload, readiness;
//! - [`proxy`]: the Pingora `ProxyHttp` implementation (the request path) and
//!   the one mapping from failures to client responses;
//! - [`upstream`]: upstream groups, selection, active and passive health;
//! - [`filter_host`]: per-route WebAssembly filter components (wasmtime);
//! - [`cache`]: the HTTP response cache (pingora-cache semantics on a
//!   byte-bounded moka store, `Cache-Status`, purge);
//! - [`ratelimit`]: host-held GCRA rate-limit buckets (`governor`);
//! - [`tls`]: rustls certificates chosen by SNI, hot-swappable;
//! - [`admin`]: the admin listener (healthz, readyz, status, metrics, drain,
//!   reload, purge);
//! - [`server`]: assembles the Pingora services and the drain-aware shutdown;
//! - [`metrics`]: the Prometheus registry;
//! - [`demo`]: the built-in origin of `edgegate demo`.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod demo;
pub mod filter_host;
pub mod listening;
pub mod logout;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
