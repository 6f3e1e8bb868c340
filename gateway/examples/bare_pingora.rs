//! The floor for the load test: a bare Pingora proxy with no edgegate logic
//! (no routing, headers, metrics), one worker, same allocator. Run it beside
//! edgegate to see how much of edgegate's CPU per request is Pingora's own:
//!
//!   cargo run --release -p edgegate --example bare_pingora -- 127.0.0.1:28082 127.0.0.1:29000
//!
//! With `static:N` as the origin it proxies nothing: every request is
//! answered from `request_filter` with an N-byte body, the floor of any
//! Pingora-based responder (e.g. a cache hit) for the cache load test.
//!
//! A third argument `timeouts` gives the upstream peer the connect, read and
//! write timeouts edgegate sets on every route (a production proxy cannot
//! run without them), to measure what they cost Pingora.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(String, Option<bytes::Bytes>, bool);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn request_filter(&self, session: &mut Session, _c: &mut ()) -> Result<bool> {
        let Some(body) = &self.1 else {
            return Ok(false);
        };
        let mut resp = pingora::http::ResponseHeader::build(200, Some(4))?;
        resp.insert_header("content-type", "text/plain")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "public, max-age=3600")?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(body.clone()), true)
            .await?;
        Ok(true)
    }
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.0.as_str(), false, String::new());
        if self.2 {
            let t = std::time::Duration::from_secs(30);
            peer.options.connection_timeout = Some(std::time::Duration::from_secs(2));
            peer.options.total_connection_timeout = Some(std::time::Duration::from_secs(2));
            peer.options.read_timeout = Some(t);
            peer.options.write_timeout = Some(t);
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, origin) = match (args.get(1), args.get(2)) {
        (Some(l), Some(o)) => (l.clone(), o.clone()),
        _ => {
            eprintln!("usage: bare_pingora LISTEN ORIGIN [timeouts]");
            std::process::exit(2);
        }
    };
    let conf = pingora::server::configuration::ServerConf {
        threads: 1,
        // The runtime edgegate runs by default (`server.work_stealing = false`),
        // so the floor compares like with like.
        work_stealing: false,
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    let timeouts = args.get(3).is_some_and(|a| a == "timeouts");
    let body = origin
        .strip_prefix("static:")
        .map(|n| bytes::Bytes::from(vec![b'x'; n.parse().unwrap_or(1024)]));
    let mut svc =
        pingora::proxy::http_proxy_service(&server.configuration, Bare(origin, body, timeouts));
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.bootstrap();
    server.run_forever();
}
