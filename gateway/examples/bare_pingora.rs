//! The floor for the load test: a bare Pingora proxy with no edgegate logic
//! (no routing, headers, metrics), one worker, same allocator. Run it beside
//! edgegate to see how much of edgegate's CPU per request is Pingora's own:
//!
//!   cargo run --release -p edgegate --example bare_pingora -- 127.0.0.1:28082 127.0.0.1:29000

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(String);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.0.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, origin) = match (args.get(1), args.get(2)) {
        (Some(l), Some(o)) => (l.clone(), o.clone()),
        _ => {
            eprintln!("usage: bare_pingora LISTEN ORIGIN");
            std::process::exit(2);
        }
    };
    let conf = pingora::server::configuration::ServerConf {
        threads: 1,
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, Bare(origin));
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.bootstrap();
    server.run_forever();
}
