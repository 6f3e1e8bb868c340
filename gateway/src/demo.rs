//! The built-in demo origin of `edgegate demo`: answers every request with
//! what it received, so a newcomer sees the headers edgegate adds. Paths
//! under `/static/` are marked cacheable for 30 seconds, so the demo's
//! cached route shows `Cache-Status: demo; hit` on the second request.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    let mut body = format!(
        "Hello from the edgegate demo origin.\n\nYou asked for: {} {}\nHeaders as they reached the origin:\n",
        req.method(),
        req.uri()
    );
    for (k, v) in req.headers() {
        body.push_str(&format!(
            "  {k}: {}\n",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    let cacheable = req.uri().path().starts_with("/static/");
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if cacheable {
        resp.headers_mut().insert(
            "cache-control",
            http::HeaderValue::from_static("public, max-age=30"),
        );
    }
    Ok(resp)
}

/// Binds `addr` now (so errors surface) and serves the demo origin on its own
/// thread and runtime.
pub fn spawn_origin(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("demo-origin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service_fn(answer))
                            .await;
                    });
                }
            })
        })?;
    Ok(local)
}
