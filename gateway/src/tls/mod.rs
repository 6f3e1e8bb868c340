//! TLS for public listeners: rustls (crypto by `ring`) through Pingora's
//! rustls acceptor.
//!
//! Each TLS listener owns a [`SniResolver`], a rustls `ResolvesServerCert`
//! whose certificate store sits behind an `ArcSwap`: a reload builds a new
//! [`CertStore`] from disk and swaps it in, so certificates change without a
//! restart and without touching open connections. Names come from each
//! certificate's subject alternative names (DNS), matched exactly or by
//! wildcard; a client with no or an unknown SNI gets the default certificate.
//! Pingora's rustls acceptor pins TLS 1.2 and 1.3.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// File unreadable.
    #[error("{path}: cannot read: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// File readable but not usable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Certificates of one listener, indexed by name.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)`, longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
    /// Every name served, for `/status`.
    pub names: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Loads one PEM chain + key and checks that they belong together.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let cert_pem = read(cert)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(cert, "no certificate found in the file".into()));
    };
    let key_pem = read(key)?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| invalid(key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| invalid(key, "no private key found in the file".into()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| invalid(key, format!("unsupported private key: {e}")))?;
    let names = dns_names(leaf.as_ref()).map_err(|r| invalid(cert, r))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        invalid(
            key,
            format!("key does not match certificate {}: {e}", cert.display()),
        )
    })?;
    Ok((Arc::new(certified), names))
}

/// DNS subject alternative names (falling back to the common name), lower case.
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

impl CertStore {
    /// Loads every certificate of a listener.
    pub fn load(certs: &[policies::Certificate]) -> Result<Self, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default = None;
        let mut all_names = Vec::new();
        for c in certs {
            let (key, names) = load_certified_key(&c.cert, &c.key)?;
            for n in &names {
                if let Some(suffix) = n.strip_prefix('*') {
                    wildcard.push((suffix.to_string(), Arc::clone(&key)));
                } else {
                    exact.entry(n.clone()).or_insert_with(|| Arc::clone(&key));
                }
            }
            all_names.extend(names);
            if c.default || default.is_none() {
                default = Some(key);
            }
        }
        wildcard.sort_by_key(|(suffix, _): &(String, _)| std::cmp::Reverse(suffix.len()));
        let default = default.ok_or_else(|| TlsError::Invalid {
            path: PathBuf::new(),
            reason: "a TLS listener needs at least one certificate".into(),
        })?;
        Ok(Self {
            exact,
            wildcard,
            default,
            names: all_names,
        })
    }

    /// The certificate for `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Arc::clone(k);
            }
            // `*.example.com` covers exactly one label.
            if let Some(dot) = name.find('.') {
                let suffix = &name[dot..];
                if let Some((_, k)) = self.wildcard.iter().find(|(s, _)| s == suffix) {
                    return Arc::clone(k);
                }
            }
        }
        Arc::clone(&self.default)
    }
}

/// SNI-based certificate choice with hot swapping.
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl SniResolver {
    /// A resolver serving `store`.
    pub fn new(store: CertStore) -> Self {
        Self {
            store: ArcSwap::from_pointee(store),
        }
    }

    /// Serves `store` from the next handshake on.
    pub fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }

    /// The names currently served.
    pub fn names(&self) -> Vec<String> {
        self.store.load().names.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().pick(hello.server_name()))
    }
}

/// The server name a client asked for in its TLS handshake, kept in the
/// connection's TLS digest (filters read it as `context.tls-sni`).
#[derive(Debug, Clone)]
pub struct ClientSni(pub String);

/// Records the client's SNI once the handshake is done.
struct SniCapture;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for SniCapture {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let name = tls.server_name()?;
        Some(Arc::new(ClientSni(name.to_ascii_lowercase())))
    }
}

/// Pingora TLS settings for a listener served by `resolver`.
pub fn listener_settings(
    resolver: Arc<SniResolver>,
    h2: bool,
) -> pingora::Result<pingora::listeners::tls::TlsSettings> {
    // With a resolver set, the certificate paths are never read.
    let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(SniCapture))?;
    settings.set_cert_resolver(resolver);
    if h2 {
        settings.enable_h2();
    } else {
        settings.set_alpn(pingora::protocols::ALPN::H1);
    }
    Ok(settings)
}

/// Writes a self-signed certificate and key for `names` into `dir`
/// (`<first name>.crt`/`.key`) and returns their paths. For development and
/// tests only: production certificates come from your CA or ACME client.
pub fn write_dev_certificate(dir: &Path, names: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
    std::fs::create_dir_all(dir)?;
    let stem = names
        .first()
        .map(|n| n.replace('*', "_wildcard"))
        .unwrap_or_else(|| "dev".into());
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, certified.cert.pem())?;
    write_private(&key_path, certified.signing_key.serialize_pem().as_bytes())?;
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
