//! The floor under any HTTP/1.1 responder on tokio, for the cache load test:
//! a current-thread tokio runtime, `httparse`, and the same N-byte answer
//! written for every request — no routing, no cache, no metrics. What the
//! hit lane (`proxy::lane`) costs above this is edgegate's own work on a hit.
//!
//!   cargo run --release -p edgegate --example tokio_floor -- 127.0.0.1:28083 1024

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(listen) = args.get(1).cloned() else {
        eprintln!("usage: tokio_floor LISTEN [BODY_BYTES]");
        std::process::exit(2);
    };
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\
         Cache-Control: public, max-age=3600\r\nAge: 1\r\nConnection: keep-alive\r\n\r\n"
    )
    .into_bytes();
    answer.resize(answer.len() + size, b'x');
    let answer: &'static [u8] = answer.leak();
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("tokio_floor: {what}: {e}");
        std::process::exit(1)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", e));
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .unwrap_or_else(|e| fail(&listen, e));
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = BytesMut::with_capacity(4096);
                let mut out = Vec::with_capacity(4096);
                loop {
                    loop {
                        let mut headers = [httparse::EMPTY_HEADER; 64];
                        let mut req = httparse::Request::new(&mut headers);
                        match req.parse(&buf) {
                            Ok(httparse::Status::Complete(n)) => {
                                buf.advance(n);
                                out.extend_from_slice(answer);
                            }
                            Ok(httparse::Status::Partial) => break,
                            Err(_) => return,
                        }
                    }
                    if !out.is_empty() {
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
}
