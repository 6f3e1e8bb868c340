//! Key sets for host-side signature checks (`edgegate:filter/crypto`).
//!
//! Keys come from a JWKS document (RSA, EC P-256/P-384, Ed25519, `oct`) and
//! from HMAC secrets in the config or in files; verification is `ring`'s.
//! Guests never see key material, only verdicts.

use base64::Engine as _;
use policies::KeySet;
use ring::signature::{self, UnparsedPublicKey};
use std::collections::HashMap;
use std::sync::Arc;

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("key set `{set}`: {reason}")]
pub struct KeyLoadError {
    set: String,
    reason: String,
}

/// Why a signature was not verified (mirrors the WIT `verify-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// Key set not granted / not defined.
    UnknownKeySet,
    /// No matching key.
    UnknownKey,
    /// Algorithm unknown or unfit for the key.
    UnsupportedAlgorithm,
    /// Keys not available.
    KeysUnavailable,
    /// Signature invalid.
    BadSignature,
}

#[derive(Debug)]
enum Key {
    Hmac(Vec<u8>),
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: Curve, point: Vec<u8> },
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// The keys of one set, by key id.
#[derive(Debug, Default)]
pub struct Keys {
    by_id: HashMap<String, Key>,
    /// Keys without a `kid`, tried when the token names none.
    anonymous: Vec<Key>,
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("bad base64url: {e}"))
}

fn jwk(v: &serde_json::Value) -> Result<Key, String> {
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .ok_or_else(|| format!("missing `{k}`"))
            .and_then(b64)
    };
    match v.get("kty").and_then(|k| k.as_str()) {
        Some("RSA") => Ok(Key::Rsa {
            n: field("n")?,
            e: field("e")?,
        }),
        Some("EC") => {
            let curve = match v.get("crv").and_then(|c| c.as_str()) {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let mut point = vec![4u8];
            point.extend(field("x")?);
            point.extend(field("y")?);
            Ok(Key::Ec { curve, point })
        }
        Some("OKP") if v.get("crv").and_then(|c| c.as_str()) == Some("Ed25519") => {
            Ok(Key::Ed25519(field("x")?))
        }
        Some("oct") => Ok(Key::Hmac(field("k")?)),
        other => Err(format!("unsupported key type {other:?}")),
    }
}

/// Adds the keys of a JWKS document to `keys`.
fn add_jwks(keys: &mut Keys, text: &str) -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no `keys` array")?;
    for (i, k) in list.iter().enumerate() {
        let key = jwk(k).map_err(|r| format!("key {i}: {r}"))?;
        match k.get("kid").and_then(|x| x.as_str()) {
            Some(kid) => {
                keys.by_id.insert(kid.to_string(), key);
            }
            None => keys.anonymous.push(key),
        }
    }
    Ok(())
}

impl Keys {
    /// Loads a key set's files and secrets (blocking I/O: config load only).
    pub fn load(set: &KeySet) -> Result<Self, KeyLoadError> {
        let err = |reason: String| KeyLoadError {
            set: set.name.clone(),
            reason,
        };
        let mut keys = Keys::default();
        if let Some(path) = &set.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            add_jwks(&mut keys, &text).map_err(|r| err(format!("{}: {r}", path.display())))?;
        }
        for (kid, secret) in &set.hmac_secrets {
            keys.by_id
                .insert(kid.clone(), Key::Hmac(secret.as_bytes().to_vec()));
        }
        for (kid, path) in &set.hmac_secret_files {
            let mut secret =
                std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < 16 {
                return Err(err(format!(
                    "{}: an HMAC secret must be at least 16 bytes",
                    path.display()
                )));
            }
            keys.by_id.insert(kid.clone(), Key::Hmac(secret));
        }
        Ok(keys)
    }

    /// Verifies `sig` over `msg` with key `kid` (or any anonymous key) and JWS `alg`.
    pub fn verify(
        &self,
        kid: Option<&str>,
        alg: &str,
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        let candidates: Vec<&Key> = match kid {
            Some(id) => vec![self.by_id.get(id).ok_or(VerifyError::UnknownKey)?],
            None if !self.anonymous.is_empty() => self.anonymous.iter().collect(),
            // No kid and no anonymous key: a set with exactly one key may be used.
            None if self.by_id.len() == 1 => self.by_id.values().collect(),
            None => return Err(VerifyError::UnknownKey),
        };
        let mut last = VerifyError::UnknownKey;
        for key in candidates {
            match verify_one(key, alg, msg, sig) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

fn verify_one(key: &Key, alg: &str, msg: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
    use VerifyError::{BadSignature, UnsupportedAlgorithm};
    match (key, alg) {
        (Key::Hmac(secret), "HS256" | "HS384" | "HS512") => {
            let algo = match alg {
                "HS256" => ring::hmac::HMAC_SHA256,
                "HS384" => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            ring::hmac::verify(&ring::hmac::Key::new(algo, secret), msg, sig)
                .map_err(|_| BadSignature)
        }
        (Key::Rsa { n, e }, "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512") => {
            let params: &signature::RsaParameters = match alg {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .map_err(|_| BadSignature)
        }
        (
            Key::Ec {
                curve: Curve::P256,
                point,
            },
            "ES256",
        ) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(msg, sig)
            .map_err(|_| BadSignature),
        (
            Key::Ec {
                curve: Curve::P384,
                point,
            },
            "ES384",
        ) => UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
            .verify(msg, sig)
            .map_err(|_| BadSignature),
        (Key::Ed25519(x), "EdDSA") => UnparsedPublicKey::new(&signature::ED25519, x)
            .verify(msg, sig)
            .map_err(|_| BadSignature),
        _ => Err(UnsupportedAlgorithm),
    }
}

/// Signatures already verified, by SHA-256 of (set, key id, algorithm,
/// message, signature). Only successes are kept, so filling it takes valid
/// signatures; it lives with the key ring and so is flushed by every reload
/// (key rotation). Claims (`exp`...) are still checked by the guest on every
/// request: only the public-key operation is saved (~45 µs for ES256).
type VerifiedCache = moka::sync::Cache<[u8; 32], ()>;

/// Entries the verified-signature cache holds.
const VERIFIED_CAPACITY: u64 = 100_000;

/// A JWKS fetched over HTTP(S): the last good document keeps serving while
/// refreshes fail (stale-on-error); kept across reloads while its URL is
/// unchanged.
pub struct Remote {
    url: String,
    refresh: std::time::Duration,
    current: arc_swap::ArcSwapOption<Keys>,
    next_due: std::sync::Mutex<std::time::Instant>,
    fetching: std::sync::atomic::AtomicBool,
}

/// Retry delay after a failed fetch (bounded by the refresh interval).
const RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(10);

fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            // Fetches are rare and may come from short-lived load-time runtimes:
            // no pooled connection outlives its runtime.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("edgegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    })
}

impl Remote {
    fn new(url: &str, refresh: std::time::Duration) -> Self {
        Self {
            url: url.to_string(),
            refresh,
            current: arc_swap::ArcSwapOption::empty(),
            next_due: std::sync::Mutex::new(std::time::Instant::now()),
            fetching: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Fetches the document now; on failure the current keys stay.
    pub async fn fetch(&self, set: &str) -> Result<(), String> {
        let result = async {
            let resp = http()
                .get(&self.url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            let text = resp.text().await.map_err(|e| e.to_string())?;
            let mut keys = Keys::default();
            add_jwks(&mut keys, &text)?;
            Ok(keys)
        }
        .await;
        let now = std::time::Instant::now();
        let mut due = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(keys) => {
                self.current.store(Some(Arc::new(keys)));
                *due = now + self.refresh;
                Ok(())
            }
            Err(e) => {
                *due = now + self.refresh.min(RETRY_AFTER_FAILURE);
                let stale = self.current.load().is_some();
                tracing::warn!(key_set = set, url = %self.url, error = %e, serving_stale = stale, "JWKS fetch failed");
                Err(format!("key set `{set}`: {}: {e}", self.url))
            }
        }
    }

    fn due(&self) -> bool {
        std::time::Instant::now() >= *self.next_due.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every key set of a config generation.
#[derive(Clone)]
pub struct KeyRing {
    sets: HashMap<String, Arc<Keys>>,
    remotes: HashMap<String, Arc<Remote>>,
    verified: VerifiedCache,
}

impl Default for KeyRing {
    fn default() -> Self {
        Self {
            sets: HashMap::new(),
            remotes: HashMap::new(),
            verified: new_cache(),
        }
    }
}

fn new_cache() -> VerifiedCache {
    moka::sync::Cache::builder()
        .max_capacity(VERIFIED_CAPACITY)
        .time_to_live(std::time::Duration::from_secs(300))
        .build()
}

fn cache_key(set: &str, kid: Option<&str>, alg: &str, msg: &[u8], sig: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [set.as_bytes(), kid.unwrap_or("").as_bytes(), alg.as_bytes()] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    ctx.update(&(msg.len() as u64).to_le_bytes());
    ctx.update(msg);
    ctx.update(sig);
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

impl KeyRing {
    /// Loads every set's files and secrets; remote sets reuse `previous`'s
    /// state when their URL is unchanged (fetch new ones with
    /// [`KeyRing::fetch_missing`]).
    pub fn load<'a>(
        sets: impl IntoIterator<Item = &'a KeySet> + Clone,
        previous: Option<&KeyRing>,
    ) -> Result<Self, KeyLoadError> {
        let remotes = sets
            .clone()
            .into_iter()
            .filter_map(|s| s.jwks_url.as_ref().map(|u| (s, u)))
            .map(|(s, url)| {
                let reused = previous
                    .and_then(|p| p.remotes.get(&s.name))
                    .filter(|r| r.url == *url && r.refresh == s.refresh)
                    .cloned();
                (
                    s.name.clone(),
                    reused.unwrap_or_else(|| Arc::new(Remote::new(url, s.refresh))),
                )
            })
            .collect();
        let sets = sets
            .into_iter()
            .map(|s| Keys::load(s).map(|k| (s.name.clone(), Arc::new(k))))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sets,
            remotes,
            verified: new_cache(),
        })
    }

    /// Fetches remote sets that have no keys yet (at load: a set whose first
    /// fetch fails stays unavailable, and readiness says so, until a retry works).
    pub async fn fetch_missing(&self) {
        for (name, remote) in &self.remotes {
            if remote.current.load().is_none() {
                let _ = remote.fetch(name).await;
            }
        }
    }

    /// Starts a background fetch of every remote set that is due.
    pub fn refresh_due(&self) {
        use std::sync::atomic::Ordering;
        for (name, remote) in &self.remotes {
            if remote.due() && !remote.fetching.swap(true, Ordering::AcqRel) {
                let (name, remote) = (name.clone(), Arc::clone(remote));
                tokio::spawn(async move {
                    let _ = remote.fetch(&name).await;
                    remote.fetching.store(false, Ordering::Release);
                });
            }
        }
    }

    /// Remote sets with no keys (readiness reasons).
    pub fn unavailable(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .remotes
            .iter()
            .filter(|(_, r)| r.current.load().is_none())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// Verifies with set `set` (a signature verified before is not checked again).
    pub fn verify(
        &self,
        set: &str,
        kid: Option<&str>,
        alg: &str,
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        let local = self.sets.get(set).ok_or(VerifyError::UnknownKeySet)?;
        let remote = match self.remotes.get(set) {
            None => None,
            Some(r) => match r.current.load_full() {
                Some(keys) => Some(keys),
                None if local.by_id.is_empty() && local.anonymous.is_empty() => {
                    return Err(VerifyError::KeysUnavailable)
                }
                None => None,
            },
        };
        // A key id the remote document has wins; else the local keys.
        let keys: &Keys = match (&remote, kid) {
            (Some(r), Some(id)) if r.by_id.contains_key(id) => r,
            (Some(r), None) if local.by_id.is_empty() && local.anonymous.is_empty() => r,
            _ => local,
        };
        // HMAC costs less than the cache key's hash: cache public-key work only.
        if alg.starts_with("HS") {
            return keys.verify(kid, alg, msg, sig);
        }
        let key = cache_key(set, kid, alg, msg, sig);
        if self.verified.contains_key(&key) {
            return Ok(());
        }
        keys.verify(kid, alg, msg, sig)?;
        self.verified.insert(key, ());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    #[test]
    fn hmac_and_ed25519_and_es256() {
        let mut keys = Keys::default();
        keys.by_id
            .insert("h".into(), Key::Hmac(b"0123456789abcdef0123".to_vec()));
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef0123"),
            b"msg",
        );
        assert_eq!(
            keys.verify(Some("h"), "HS256", b"msg", tag.as_ref()),
            Ok(())
        );
        assert_eq!(
            keys.verify(Some("h"), "HS256", b"msg2", tag.as_ref()),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            keys.verify(Some("h"), "RS256", b"msg", tag.as_ref()),
            Err(VerifyError::UnsupportedAlgorithm)
        );
        assert_eq!(
            keys.verify(Some("x"), "HS256", b"msg", tag.as_ref()),
            Err(VerifyError::UnknownKey)
        );

        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        keys.by_id
            .insert("ed".into(), Key::Ed25519(ed.public_key().as_ref().to_vec()));
        assert_eq!(
            keys.verify(Some("ed"), "EdDSA", b"m", ed.sign(b"m").as_ref()),
            Ok(())
        );

        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let ec = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let point = ec.public_key().as_ref().to_vec();
        let jwk_json = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "ec1",
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        keys.by_id.insert("ec1".into(), jwk(&jwk_json).unwrap());
        let sig = ec.sign(&rng, b"payload").unwrap();
        assert_eq!(
            keys.verify(Some("ec1"), "ES256", b"payload", sig.as_ref()),
            Ok(())
        );
        assert_eq!(
            keys.verify(Some("ec1"), "ES384", b"payload", sig.as_ref()),
            Err(VerifyError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn ring_caches_only_valid_public_key_signatures() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut keys = Keys::default();
        keys.by_id
            .insert("ed".into(), Key::Ed25519(ed.public_key().as_ref().to_vec()));
        let ring = KeyRing {
            sets: [("s".to_string(), Arc::new(keys))].into(),
            remotes: HashMap::new(),
            verified: new_cache(),
        };
        let sig = ed.sign(b"m");
        assert_eq!(
            ring.verify("s", Some("ed"), "EdDSA", b"m", sig.as_ref()),
            Ok(())
        );
        assert!(ring.verified.contains_key(&cache_key(
            "s",
            Some("ed"),
            "EdDSA",
            b"m",
            sig.as_ref()
        )));
        assert_eq!(
            ring.verify("s", Some("ed"), "EdDSA", b"m", sig.as_ref()),
            Ok(()),
            "cached"
        );
        let mut bad = sig.as_ref().to_vec();
        bad[0] ^= 1;
        assert_eq!(
            ring.verify("s", Some("ed"), "EdDSA", b"m", &bad),
            Err(VerifyError::BadSignature)
        );
        assert!(!ring
            .verified
            .contains_key(&cache_key("s", Some("ed"), "EdDSA", b"m", &bad)));
        assert_eq!(
            ring.verify("s", Some("ed"), "EdDSA", b"other", sig.as_ref()),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            ring.verify("nope", None, "EdDSA", b"m", sig.as_ref()),
            Err(VerifyError::UnknownKeySet)
        );
    }
}
