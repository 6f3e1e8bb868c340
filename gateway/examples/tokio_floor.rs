//! The floor under any HTTP/1.1 server on tokio, for the load tests: a
//! current-thread tokio runtime and `httparse`, nothing else — no routing,
//! no headers added, no metrics, no timeouts.
//!
//! - `tokio_floor LISTEN [BODY_BYTES]` answers every request with the same
//!   N-byte response (the cache load test: what the hit lane, `proxy::lane`,
//!   costs above this is edgegate's own work on a hit).
//! - `tokio_floor LISTEN proxy:ORIGIN` forwards each request head unchanged
//!   to ORIGIN over one keep-alive connection per client connection and
//!   copies the `Content-Length` response back (the proxy load test: the
//!   least any tokio-based HTTP/1.1 proxy can cost). Bodiless requests
//!   only; it is a measuring stick, not a proxy.
//!
//!   cargo run --release -p edgegate --example tokio_floor -- 127.0.0.1:28083 1024
//!   cargo run --release -p edgegate --example tokio_floor -- 127.0.0.1:28084 proxy:127.0.0.1:29000

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fail(what: &str, e: std::io::Error) -> ! {
    eprintln!("tokio_floor: {what}: {e}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(listen) = args.get(1).cloned() else {
        eprintln!("usage: tokio_floor LISTEN [BODY_BYTES | proxy:ORIGIN]");
        std::process::exit(2);
    };
    let mode = args.get(2).cloned().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", e));
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .unwrap_or_else(|e| fail(&listen, e));
        let origin: Option<&'static str> =
            mode.strip_prefix("proxy:").map(|o| &*o.to_string().leak());
        let answer = static_answer(mode.parse().unwrap_or(1024));
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            match origin {
                Some(origin) => tokio::spawn(proxy(s, origin)),
                None => tokio::spawn(respond(s, answer)),
            };
        }
    });
}

fn static_answer(size: usize) -> &'static [u8] {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\
         Cache-Control: public, max-age=3600\r\nAge: 1\r\nConnection: keep-alive\r\n\r\n"
    )
    .into_bytes();
    answer.resize(answer.len() + size, b'x');
    answer.leak()
}

/// Reads until `buf` starts with a whole request head; its length.
async fn request_head(s: &mut TcpStream, buf: &mut BytesMut) -> Option<usize> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        match httparse::Request::new(&mut headers).parse(buf) {
            Ok(httparse::Status::Complete(n)) => return Some(n),
            Ok(httparse::Status::Partial) => {}
            Err(_) => return None,
        }
        if matches!(s.read_buf(buf).await, Ok(0) | Err(_)) {
            return None;
        }
    }
}

async fn respond(mut s: TcpStream, answer: &'static [u8]) {
    let mut buf = BytesMut::with_capacity(4096);
    while let Some(n) = request_head(&mut s, &mut buf).await {
        buf.advance(n);
        if s.write_all(answer).await.is_err() {
            return;
        }
    }
}

async fn proxy(mut s: TcpStream, origin: &'static str) {
    let Ok(mut up) = TcpStream::connect(origin).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(4096);
    let mut ubuf = BytesMut::with_capacity(4096);
    while let Some(n) = request_head(&mut s, &mut buf).await {
        if up.write_all(&buf[..n]).await.is_err() {
            return;
        }
        buf.advance(n);
        let (head, len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = resp.parse(&ubuf) {
                let len = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0usize);
                break (head, len);
            }
            if matches!(up.read_buf(&mut ubuf).await, Ok(0) | Err(_)) {
                return;
            }
        };
        while ubuf.len() < head + len {
            if matches!(up.read_buf(&mut ubuf).await, Ok(0) | Err(_)) {
                return;
            }
        }
        if s.write_all(&ubuf[..head + len]).await.is_err() {
            return;
        }
        ubuf.advance(head + len);
    }
}
