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
//!   least any tokio-based HTTP/1.1 proxy can cost).
//! - `tokio_floor LISTEN edge:ORIGIN` does the per-request work edgegate's
//!   proxy does on a plain request, on top: hop-by-hop fields dropped,
//!   `X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded`, `Via` and a
//!   request id (a fresh UUID) added upstream; `Date`, `Connection`, `Via`
//!   and the request id set downstream; a per-thread pool of upstream
//!   connections shared by all clients; connect, read and write timeouts.
//!   What an HTTP/1.1 proxy path of edgegate's own, beside Pingora's, would
//!   start from (loadtest/RESULTS.md, session 6).
//!
//! Bodiless requests and `Content-Length` responses from a keep-alive
//! origin only: these are
//! measuring sticks, not proxies.
//!
//!   cargo run --release -p edgegate --example tokio_floor -- 127.0.0.1:28083 1024
//!   cargo run --release -p edgegate --example tokio_floor -- 127.0.0.1:28084 proxy:127.0.0.1:29000
//!   cargo run --release -p edgegate --example tokio_floor -- 127.0.0.1:28085 edge:127.0.0.1:29000

use bytes::{Buf, BufMut, BytesMut};
use std::cell::RefCell;
use std::io::Write as _;
use std::time::Duration;
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
        eprintln!("usage: tokio_floor LISTEN [BODY_BYTES | proxy:ORIGIN | edge:ORIGIN]");
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
        let leak = |o: &str| -> &'static str { o.to_string().leak() };
        let bare = mode.strip_prefix("proxy:").map(leak);
        let edge = mode.strip_prefix("edge:").map(leak);
        let answer = static_answer(mode.parse().unwrap_or(1024));
        loop {
            let Ok((s, peer)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            match (bare, edge) {
                (Some(origin), _) => tokio::spawn(proxy(s, origin)),
                (_, Some(origin)) => tokio::spawn(edge_proxy(s, peer, origin)),
                _ => tokio::spawn(respond(s, answer)),
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

thread_local! {
    /// Idle upstream connections, shared by this thread's clients.
    static POOL: RefCell<Vec<TcpStream>> = const { RefCell::new(Vec::new()) };
}

/// Request fields a proxy drops or replaces (hop-by-hop, and the ones the
/// `edge` mode sets itself).
const REPLACED: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "forwarded",
    "via",
    "x-request-id",
];

/// The request head sent upstream, and the request id.
fn edge_request(req: &httparse::Request<'_, '_>, client: &str, out: &mut Vec<u8>) -> String {
    let field = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let id = field("x-request-id").unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let host = field("host").unwrap_or_default();
    out.clear();
    let _ = write!(
        out,
        "{} {} HTTP/1.1\r\n",
        req.method.unwrap_or("GET"),
        req.path.unwrap_or("/")
    );
    for h in req.headers.iter() {
        if !REPLACED.iter().any(|r| h.name.eq_ignore_ascii_case(r)) {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    let xff = match field("x-forwarded-for") {
        Some(prev) => format!("{prev}, {client}"),
        None => client.to_string(),
    };
    let _ = write!(
        out,
        "x-forwarded-for: {xff}\r\nx-forwarded-proto: http\r\n\
         forwarded: for={client};host={host};proto=http\r\nvia: 1.1 floor\r\n\
         x-request-id: {id}\r\n\r\n"
    );
    id
}

async fn edge_proxy(mut s: TcpStream, peer: std::net::SocketAddr, origin: &'static str) {
    const TIMEOUT: Duration = Duration::from_secs(30);
    let client = peer.ip().to_string();
    let mut buf = BytesMut::with_capacity(4096);
    let mut ubuf = BytesMut::with_capacity(4096);
    let mut head = Vec::with_capacity(1024);
    let mut out = BytesMut::with_capacity(4096);
    while let Some(n) = request_head(&mut s, &mut buf).await {
        let id = {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if req.parse(&buf).is_err() {
                return;
            }
            edge_request(&req, &client, &mut head)
        };
        buf.advance(n);
        let mut up = match POOL.with(|p| p.borrow_mut().pop()) {
            Some(up) => up,
            None => match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(origin))
                .await
            {
                Ok(Ok(up)) => {
                    let _ = up.set_nodelay(true);
                    up
                }
                _ => return,
            },
        };
        if !matches!(
            tokio::time::timeout(TIMEOUT, up.write_all(&head)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        out.clear();
        let (end, len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(end)) = resp.parse(&ubuf) {
                let mut len = 0usize;
                let _ = write!(
                    (&mut out).writer(),
                    "HTTP/1.1 {} {}\r\n",
                    resp.code.unwrap_or(502),
                    resp.reason.unwrap_or("")
                );
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                    }
                    if ["date", "connection", "keep-alive"]
                        .iter()
                        .any(|n| h.name.eq_ignore_ascii_case(n))
                    {
                        continue;
                    }
                    out.put_slice(h.name.as_bytes());
                    out.put_slice(b": ");
                    out.put_slice(h.value);
                    out.put_slice(b"\r\n");
                }
                let date = httpdate::fmt_http_date(std::time::SystemTime::now());
                let _ = write!(
                    (&mut out).writer(),
                    "Date: {date}\r\nConnection: keep-alive\r\nvia: 1.1 floor\r\n\
                     x-request-id: {id}\r\n\r\n"
                );
                break (end, len);
            }
            if !matches!(
                tokio::time::timeout(TIMEOUT, up.read_buf(&mut ubuf)).await,
                Ok(Ok(1..))
            ) {
                return;
            }
        };
        while ubuf.len() < end + len {
            if !matches!(
                tokio::time::timeout(TIMEOUT, up.read_buf(&mut ubuf)).await,
                Ok(Ok(1..))
            ) {
                return;
            }
        }
        out.put_slice(&ubuf[end..end + len]);
        ubuf.advance(end + len);
        POOL.with(|p| p.borrow_mut().push(up));
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}
