//! First-party filter `jwt-auth`: bearer JWTs (RFC 7519) on a route.
//!
//! The signature is checked by the host (`edgegate:filter/crypto`, `ring`)
//! with the route's key set: a JWKS file (rotation = replace the file and
//! reload) or HMAC secrets. The guest parses, pins the algorithm and checks
//! the claims; it never sees key material.
//!
//! ```toml
//! [key_sets.main]
//! hmac_secrets = { example = "edgegate-example-secret" }
//! # or jwks_file = "jwks.json", or jwks_url = "https://idp.example/.well-known/jwks.json"
//!
//! [[routes.filters]]
//! module = "jwt-auth"
//! key_sets = ["main"]
//! config.key_set = "main"
//! config.algorithms = ["HS256"]          # pinned; `none` is always refused
//! config.issuer = "edgegate-example"     # string or list; optional
//! config.audience = "edgegate-api"       # string or list; optional
//! config.leeway_seconds = 30             # for exp / nbf; default 30
//! config.required_claims = ["sub"]       # default ["exp"]
//! config.forward_claims = { sub = "x-user-id" }   # claim -> upstream header
//! ```
//!
//! Failures answer 401 with an RFC 6750 `WWW-Authenticate: Bearer` header
//! (`error="invalid_token"` with a short description when a token was
//! presented). On success the token's `sub` becomes the principal for later
//! filters (e.g. `rate-limit` with `key = "principal"`).

use base64::Engine as _;
use edgegate_filter_sdk::{
    clock, context, crypto, export_filter, log, Filter, Header, HeaderEdits, Phases, Request,
    RequestDecision, RequestEdits, Response,
};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains(&self, v: &str) -> bool {
        match self {
            OneOrMany::One(s) => s == v,
            OneOrMany::Many(l) => l.iter().any(|s| s == v),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    key_set: String,
    algorithms: Vec<String>,
    issuer: Option<OneOrMany>,
    audience: Option<OneOrMany>,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    #[serde(default = "default_required")]
    required_claims: Vec<String>,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    #[serde(default = "default_realm")]
    realm: String,
    /// Remove the Authorization header before the upstream. Default false.
    #[serde(default)]
    strip_token: bool,
}

fn default_leeway() -> u64 {
    30
}
fn default_required() -> Vec<String> {
    vec!["exp".into()]
}
fn default_realm() -> String {
    "edgegate".into()
}

fn config() -> Config {
    let fail = |why: String| -> ! {
        log::write(
            log::Level::Error,
            &format!("invalid `jwt-auth` config: {why}"),
        );
        panic!("invalid `jwt-auth` config: {why}");
    };
    let c: Config =
        serde_json::from_str(&context::config()).unwrap_or_else(|e| fail(e.to_string()));
    if c.algorithms.is_empty() {
        fail("`algorithms` must list at least one algorithm".into());
    }
    if let Some(a) = c
        .algorithms
        .iter()
        .find(|a| !ALGORITHMS.contains(&a.as_str()))
    {
        fail(format!(
            "unsupported algorithm `{a}` (supported: {})",
            ALGORITHMS.join(", ")
        ));
    }
    c
}

fn b64(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()
}

fn challenge(realm: &str, error: Option<&str>) -> RequestDecision {
    let value = match error {
        None => format!("Bearer realm=\"{realm}\""),
        Some(desc) => format!(
            "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{desc}\""
        ),
    };
    let body = match error {
        None => "unauthorized: bearer token required\n".to_string(),
        Some(desc) => format!("unauthorized: {desc}\n"),
    };
    RequestDecision::Respond(Response::text(401, &body).with_header("www-authenticate", value))
}

/// Checks the token; `Err` holds the RFC 6750 error description.
fn check(
    token: &str,
    c: &Config,
    now: u64,
) -> Result<serde_json::Map<String, Value>, &'static str> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token");
    };
    let header: Value = b64(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("malformed token")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("malformed token")?;
    if alg == "none" || !c.algorithms.iter().any(|a| a == alg) {
        return Err("algorithm not allowed");
    }
    if header.get("crit").is_some() {
        return Err("unsupported critical header");
    }
    let signature = b64(s).ok_or("malformed token")?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let signed = &token[..h.len() + 1 + p.len()];
    crypto::verify(
        &c.key_set,
        kid.as_deref(),
        alg,
        signed.as_bytes(),
        &signature,
    )
    .map_err(|e| match e {
        crypto::VerifyError::BadSignature => "invalid signature",
        crypto::VerifyError::UnknownKey => "unknown key",
        crypto::VerifyError::UnsupportedAlgorithm => "algorithm not allowed",
        crypto::VerifyError::KeysUnavailable | crypto::VerifyError::UnknownKeySet => {
            "keys unavailable"
        }
    })?;
    let claims = match b64(p).and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
        Some(Value::Object(claims)) => claims,
        _ => return Err("malformed token"),
    };
    for name in &c.required_claims {
        if !claims.contains_key(name) {
            return Err("missing required claim");
        }
    }
    let time = |name: &str| {
        claims
            .get(name)
            .map(|v| v.as_u64().ok_or("malformed time claim"))
    };
    if let Some(exp) = time("exp") {
        if now > exp?.saturating_add(c.leeway_seconds) {
            return Err("token expired");
        }
    }
    if let Some(nbf) = time("nbf") {
        if now.saturating_add(c.leeway_seconds) < nbf? {
            return Err("token not yet valid");
        }
    }
    if let Some(issuers) = &c.issuer {
        match claims.get("iss").and_then(Value::as_str) {
            Some(iss) if issuers.contains(iss) => {}
            _ => return Err("wrong issuer"),
        }
    }
    if let Some(audiences) = &c.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.contains(a)),
            _ => false,
        };
        if !ok {
            return Err("wrong audience");
        }
    }
    Ok(claims)
}

/// A claim as a header value: strings and numbers, no control characters.
fn claim_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!s.is_empty() && s.len() <= 1024 && s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
        .then_some(s)
}

struct JwtAuth;

impl Filter for JwtAuth {
    fn phases() -> Phases {
        config();
        Phases::REQUEST_HEAD
    }

    fn on_request(request: Request) -> RequestDecision {
        let c = config();
        let Some(auth) = request.header_str("authorization") else {
            return challenge(&c.realm, None);
        };
        let token = match auth.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                t.trim()
            }
            _ => return challenge(&c.realm, None),
        };
        let now = clock::now_unix_ms() / 1000;
        let claims = match check(token, &c, now) {
            Ok(claims) => claims,
            Err(why) => return challenge(&c.realm, Some(why)),
        };
        let mut set = Vec::new();
        let mut remove: Vec<String> = c
            .forward_claims
            .values()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        for (claim, header) in &c.forward_claims {
            if let Some(v) = claims.get(claim).and_then(claim_value) {
                set.push(Header::new(header, v));
            }
        }
        if c.strip_token {
            remove.push("authorization".into());
        }
        let principal = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut labels = Vec::new();
        if let Some(iss) = claims.get("iss").and_then(Value::as_str) {
            labels.push(("jwt.iss".to_string(), iss.to_string()));
        }
        RequestDecision::Edit(RequestEdits {
            // Forwarded-claim headers are removed first so a client cannot
            // smuggle its own `x-user-id`.
            headers: HeaderEdits {
                remove,
                set,
                append: Vec::new(),
            },
            principal,
            labels,
            cache_key: Vec::new(),
            rewrite_path: None,
        })
    }
}

export_filter!(JwtAuth);
