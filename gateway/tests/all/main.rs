//! edgegate's integration tests: one binary, real Pingora listeners, an
//! in-process origin on 127.0.0.1:0, real TLS handshakes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

mod cache;
mod filters;
mod health;
mod lane;
mod process;
mod proxy;
mod relay;
mod reload;
mod tls;
