//! TLS: SNI picks the certificate, TLS 1.2/1.3 only, ALPN h2, hot reload.

use crate::harness::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;

/// Accepts any certificate: these tests check *which* certificate is
/// presented, not the chain (dev certificates are self-signed).
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Handshake {
    cert: Vec<u8>,
    alpn: Option<Vec<u8>>,
    version: rustls::ProtocolVersion,
}

async fn handshake(
    addr: SocketAddr,
    sni: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Handshake {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    Handshake {
        cert: conn.peer_certificates().unwrap()[0].to_vec(),
        alpn: conn.alpn_protocol().map(|p| p.to_vec()),
        version: conn.protocol_version().unwrap(),
    }
}

fn tls_config(origin: SocketAddr) -> String {
    format!(
        r#"
[pop]
name = "tls-pop"
[server]
threads = 2
[log]
access_log = false
[admin]
listen = "{{admin}}"
[[listeners]]
name = "https"
listen = "{{listen}}"
[[listeners.tls.certificates]]
cert = "{{dir}}/a.test.crt"
key = "{{dir}}/a.test.key"
default = true
[[listeners.tls.certificates]]
cert = "{{dir}}/b.test.crt"
key = "{{dir}}/b.test.key"
[upstreams.app]
backends = ["{origin}"]
[[routes]]
name = "all"
upstream = "app"
"#
    )
}

fn der_of(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    der.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_h2_by_alpn_and_certs_reload() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    edgegate::tls::write_dev_certificate(dir.path(), &["a.test".into()]).unwrap();
    edgegate::tls::write_dev_certificate(dir.path(), &["b.test".into(), "*.b.test".into()])
        .unwrap();
    let a_der = der_of(&dir.path().join("a.test.crt"));
    let b_der = der_of(&dir.path().join("b.test.crt"));
    let gw = Gateway::start_in(dir, &tls_config(o.addr)).await;
    let all = &[&rustls::version::TLS13, &rustls::version::TLS12];

    let h = handshake(gw.http, "a.test", all).await;
    assert_eq!(h.cert, a_der);
    assert_eq!(h.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(handshake(gw.http, "b.test", all).await.cert, b_der);
    assert_eq!(
        handshake(gw.http, "img.b.test", all).await.cert,
        b_der,
        "wildcard SAN"
    );
    assert_eq!(
        handshake(gw.http, "unknown.test", all).await.cert,
        a_der,
        "default certificate"
    );
    let h12 = handshake(gw.http, "b.test", &[&rustls::version::TLS12]).await;
    assert_eq!(h12.version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(h12.cert, b_der);

    // A real request over h2, with X-Forwarded-Proto https.
    let c = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("b.test", gw.http)
        .build()
        .unwrap();
    let r = c
        .get(format!("https://b.test:{}/secure", gw.http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["via"], "2 tls-pop");
    let seen = o.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert!(seen.headers["forwarded"].ends_with("proto=https"));

    // New certificate for b.test on disk + reload: served without a restart.
    edgegate::tls::write_dev_certificate(gw.dir.path(), &["b.test".into()]).unwrap();
    let new_b = der_of(&gw.dir.path().join("b.test.crt"));
    assert_ne!(new_b, b_der);
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(handshake(gw.http, "b.test", all).await.cert, new_b);

    // A broken key on disk: reload rejected, old certificate kept.
    std::fs::write(gw.dir.path().join("b.test.key"), "not a key").unwrap();
    let r = gw.reload().await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("b.test.key"));
    assert_eq!(handshake(gw.http, "b.test", all).await.cert, new_b);
}

/// A TLS 1.1 ClientHello (no `supported_versions`): what an old client sends.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let name = b"a.test";
    let mut sni = vec![];
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut ext = vec![0x00, 0x00];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]); // secp256r1
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // point formats
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    edgegate::tls::write_dev_certificate(dir.path(), &["a.test".into()]).unwrap();
    edgegate::tls::write_dev_certificate(dir.path(), &["b.test".into()]).unwrap();
    let gw = Gateway::start_in(dir, &tls_config(o.addr)).await;
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(!out.is_empty(), "the server answers with an alert");
    assert_eq!(out[0], 0x15, "an alert record, not a ServerHello: {out:?}");
    assert_eq!(out.get(5), Some(&2), "a fatal alert: {out:?}");
    // rustls answers protocol_version (70) or handshake_failure (40).
    assert!(matches!(out.get(6), Some(&70) | Some(&40)), "{out:?}");
    assert_eq!(o.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_see_the_client_sni() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.test", "b.test"] {
        edgegate::tls::write_dev_certificate(dir.path(), &[name.to_string()]).unwrap();
    }
    let config = tls_config(o.addr).replace(
        "[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        "[[routes]]\nname = \"all\"\nupstream = \"app\"\n[[routes.filters]]\nmodule = \"headers\"\nconfig.request.set = { \"x-sni\" = \"[{tls_sni}]\" }\n",
    );
    let gw = Gateway::start_in(dir, &config).await;
    let https = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("b.test", gw.http)
        .build()
        .unwrap();
    let r = https
        .get(format!("https://b.test:{}/sni", gw.http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(o.last().headers["x-sni"], "[b.test]");
}

/// Cache hits over TLS: HTTP/1.1 (ALPN `http/1.1`) hits take the hit lane
/// with the `https` key the fill was stored under; h2 hits are Pingora's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_hits_take_the_lane_on_http1_and_pingora_on_h2() {
    let origin = crate::cache::Scripted::start().await;
    origin.set("/c", crate::cache::Reply::ok("max-age=60", "cached"));
    let dir = tempfile::tempdir().unwrap();
    edgegate::tls::write_dev_certificate(dir.path(), &["a.test".into()]).unwrap();
    edgegate::tls::write_dev_certificate(dir.path(), &["b.test".into()]).unwrap();
    let config = format!("{}[routes.cache]\n", tls_config(origin.addr));
    let gw = Gateway::start_in(dir, &config).await;
    let lane_hits = || gw.shared.metrics.cache_lane_hits.get();
    let url = format!("https://a.test:{}/c", gw.http.port());
    let client = |h1: bool| {
        let b = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .resolve("a.test", gw.http);
        if h1 { b.http1_only() } else { b }.build().unwrap()
    };
    let h1 = client(true);
    for _ in 0..3 {
        let r = h1.get(&url).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
        assert_eq!(r.text().await.unwrap(), "cached");
    }
    assert_eq!(origin.hits("/c"), 1);
    assert_eq!(lane_hits(), 2, "both hits over TLS HTTP/1.1 took the lane");
    let r = client(false).get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(r.headers()["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("tls-pop; hit"));
    assert_eq!(r.text().await.unwrap(), "cached");
    assert_eq!(lane_hits(), 2, "h2 is Pingora's");
}
