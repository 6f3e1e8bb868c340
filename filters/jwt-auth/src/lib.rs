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
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// A string or a list of strings (`issuer`, `audience`).
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// By hand: `#[serde(untagged)]` buffers the value and tries each variant,
/// which cost a quarter of parsing the config, and its error names no type.
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut list = Vec::new();
                while let Some(s) = seq.next_element()? {
                    list.push(s);
                }
                Ok(OneOrMany::Many(list))
            }
        }
        d.deserialize_any(Visit)
    }
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

/// The route's config, parsed once per instance: in `phases`, which a
/// recycled instance runs before its snapshot, so its requests start with
/// the parsed config and skip the parse.
fn config() -> &'static Config {
    static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(parse_config)
}

fn parse_config() -> Config {
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

/// The JOSE header fields the filter reads. Other fields are skipped
/// without being kept; a duplicate `alg`, `kid` or `crit` makes the token
/// malformed (RFC 7515 §4 lets a parser refuse duplicates).
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    /// Present at all, even as `null`: no critical extension is understood.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

impl<'a> JoseHeader<'a> {
    /// The header, which must be a JSON object (a derived struct would
    /// also take an array, field by field).
    fn parse(json: &'a [u8]) -> Option<JoseHeader<'a>> {
        let first = json.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        serde_json::from_slice(json).ok()
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// A token's claims, each kept as its raw JSON text and read only if a
/// check or a forwarded header needs it: parsing every claim into a
/// `serde_json::Value` cost more than all the checks (filter_bench).
/// A repeated claim keeps its last value (RFC 7519 §4). A list searched
/// from the end, not a map: a token has a handful of claims, and a map's
/// nodes cost more to build and drop than the scans.
struct Claims<'a>(Vec<(Name<'a>, &'a RawValue)>);

/// A claim name, borrowed from the token unless it has escapes.
#[derive(Deserialize)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

/// Only a JSON object (a derived sequence would take an array too).
impl<'de> Deserialize<'de> for Claims<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Claims<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Claims<'de>, A::Error> {
                let mut claims = Vec::with_capacity(8);
                while let Some(entry) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    claims.push(entry);
                }
                Ok(Claims(claims))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A JSON string, borrowed unless it has escapes; `None` for any other
/// JSON value.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    // `RawValue` holds valid JSON: a string without a backslash is its
    // own text (control characters were refused by the parse).
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

impl<'a> Claims<'a> {
    fn parse(json: &'a [u8]) -> Option<Claims<'a>> {
        serde_json::from_slice(json).ok()
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n.0 == name)
            .map(|(_, v)| *v)
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A string claim; `None` when absent or not a string.
    fn str(&self, name: &str) -> Option<Cow<'a, str>> {
        json_str(self.get(name)?)
    }

    /// A NumericDate claim (whole seconds); `Err` when present but not one.
    fn time(&self, name: &str) -> Option<Result<u64, &'static str>> {
        let text = self.get(name)?.get();
        // Valid JSON, so all digits is a plain integer (no leading zeros).
        if (1..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) {
            return Some(text.parse().map_err(|_| "malformed time claim"));
        }
        Some(serde_json::from_str(text).map_err(|_| "malformed time claim"))
    }

    /// `aud` names `want` (one of them), as a string or within a list.
    fn audience_in(&self, want: &OneOrMany) -> bool {
        let Some(raw) = self.get("aud") else {
            return false;
        };
        if let Some(one) = json_str(raw) {
            return want.contains(&one);
        }
        serde_json::from_str::<Vec<&RawValue>>(raw.get()).is_ok_and(|list| {
            list.iter()
                .filter_map(|v| json_str(v))
                .any(|a| want.contains(&a))
        })
    }

    /// A claim as a forwarded header value ([`claim_value`]).
    fn header_value(&self, name: &str) -> Option<String> {
        let raw = self.get(name)?;
        match json_str(raw) {
            Some(s) => header_text(s.into_owned()),
            None => claim_value(&serde_json::from_str(raw.get()).ok()?),
        }
    }
}

/// Checks the token; `Err` holds the RFC 6750 error description. The
/// claims borrow from `payload`, which receives the decoded claims JSON.
fn check<'a>(
    token: &str,
    c: &Config,
    now: u64,
    payload: &'a mut Vec<u8>,
) -> Result<Claims<'a>, &'static str> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token");
    };
    let header_json = b64(h).ok_or("malformed token")?;
    let header = JoseHeader::parse(&header_json).ok_or("malformed token")?;
    let alg = &*header.alg;
    if alg == "none" || !c.algorithms.iter().any(|a| a == alg) {
        return Err("algorithm not allowed");
    }
    if header.crit {
        return Err("unsupported critical header");
    }
    let signature = b64(s).ok_or("malformed token")?;
    let signed = &token[..h.len() + 1 + p.len()];
    crypto::verify(
        &c.key_set,
        header.kid.as_deref(),
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
    *payload = b64(p).ok_or("malformed token")?;
    let claims = Claims::parse(payload).ok_or("malformed token")?;
    check_claims(&claims, c, now)?;
    Ok(claims)
}

/// The claim checks of a token whose signature holds.
fn check_claims(claims: &Claims, c: &Config, now: u64) -> Result<(), &'static str> {
    if c.required_claims.iter().any(|name| !claims.has(name)) {
        return Err("missing required claim");
    }
    if let Some(exp) = claims.time("exp") {
        if now > exp?.saturating_add(c.leeway_seconds) {
            return Err("token expired");
        }
    }
    if let Some(nbf) = claims.time("nbf") {
        if now.saturating_add(c.leeway_seconds) < nbf? {
            return Err("token not yet valid");
        }
    }
    if let Some(issuers) = &c.issuer {
        match claims.str("iss") {
            Some(iss) if issuers.contains(&iss) => {}
            _ => return Err("wrong issuer"),
        }
    }
    if let Some(audiences) = &c.audience {
        if !claims.audience_in(audiences) {
            return Err("wrong audience");
        }
    }
    Ok(())
}

/// A claim as a header value: strings and numbers, no control characters.
fn claim_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    header_text(s)
}

/// `s` if it can be a header value: 1 to 1024 bytes of printable ASCII or tab.
fn header_text(s: String) -> Option<String> {
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
        let mut payload = Vec::new();
        let claims = match check(token, c, now, &mut payload) {
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
            if let Some(v) = claims.header_value(claim) {
                set.push(Header::new(header, v));
            }
        }
        if c.strip_token {
            remove.push("authorization".into());
        }
        let principal = claims.str("sub").map(Cow::into_owned);
        let mut labels = Vec::new();
        if let Some(iss) = claims.str("iss") {
            labels.push(("jwt.iss".to_string(), iss.into_owned()));
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

/// A per-request arena: every call ends with the instance reset or
/// discarded, so nothing needs freeing (`RequestArena`'s docs); 14 KiB keeps
/// the component at one 64 KiB page.
#[global_allocator]
static ALLOC: edgegate_filter_sdk::RequestArena<14336> = edgegate_filter_sdk::RequestArena::new();

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }

    fn checked(claims: &str, c: &Config, now: u64) -> Result<(), &'static str> {
        let claims = Claims::parse(claims.as_bytes()).ok_or("malformed token")?;
        check_claims(&claims, c, now)
    }

    #[test]
    fn jose_header_fields() {
        let h =
            JoseHeader::parse(br#" {"typ":"JWT","alg":"ES256","kid":"k\u0031","x":[1,{"y":2}]}"#)
                .unwrap();
        assert_eq!(&*h.alg, "ES256");
        assert!(matches!(h.alg, Cow::Borrowed(_)));
        assert_eq!(h.kid.as_deref(), Some("k1"));
        assert!(!h.crit);
        let h = JoseHeader::parse(br#"{"alg":"HS256","crit":null}"#).unwrap();
        assert!(h.crit, "`crit` counts even as null");
        for bad in [
            r#"{"kid":"k"}"#,
            r#"{"alg":5}"#,
            r#"{"alg":"HS256","alg":"none"}"#,
            r#"["HS256"]"#,
            r#" ["HS256", "k"]"#,
            "",
        ] {
            assert!(JoseHeader::parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn issuer_and_audience_take_a_string_or_a_list() {
        let c =
            config(r#"{"key_set":"k","algorithms":["HS256"],"issuer":"a","audience":["x","y"]}"#);
        assert!(matches!(&c.issuer, Some(OneOrMany::One(i)) if i == "a"));
        assert!(matches!(&c.audience, Some(OneOrMany::Many(l)) if l == &["x", "y"]));
        for bad in [
            r#""issuer":5"#,
            r#""issuer":["a",5]"#,
            r#""audience":{"a":1}"#,
        ] {
            let json = format!(r#"{{"key_set":"k","algorithms":["HS256"],{bad}}}"#);
            let e = serde_json::from_str::<Config>(&json)
                .err()
                .expect(bad)
                .to_string();
            assert!(
                e.contains("a string or a list of strings") || e.contains("expected a string"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn time_claims_with_leeway() {
        let c = config(r#"{"key_set":"k","algorithms":["HS256"],"leeway_seconds":10}"#);
        assert_eq!(checked(r#"{"exp":1000}"#, &c, 1010), Ok(()));
        assert_eq!(checked(r#"{"exp":1000}"#, &c, 1011), Err("token expired"));
        assert_eq!(checked(r#"{"exp":1000,"nbf":1020}"#, &c, 1010), Ok(()));
        assert_eq!(
            checked(r#"{"exp":2000,"nbf":1021}"#, &c, 1010),
            Err("token not yet valid")
        );
        for bad in [
            r#"{"exp":1.5e3}"#,
            r#"{"exp":"2000"}"#,
            r#"{"exp":null}"#,
            r#"{"exp":-1}"#,
        ] {
            assert_eq!(checked(bad, &c, 0), Err("malformed time claim"), "{bad}");
        }
        assert_eq!(
            checked(r#"{"sub":"a"}"#, &c, 0),
            Err("missing required claim")
        );
        assert_eq!(checked(r#"[1]"#, &c, 0), Err("malformed token"));
        assert_eq!(
            checked(r#"{"exp":9999,"exp":1}"#, &c, 100),
            Err("token expired"),
            "a repeated claim keeps its last value"
        );
        assert_eq!(
            checked(r#"{ "exp" : 1000 , "nbf" :1 }"#, &c, 1010),
            Ok(()),
            "whitespace around values"
        );
        assert_eq!(
            checked(r#"{"exp":9999999999999999999}"#, &c, 0),
            Ok(()),
            "19 digits"
        );
        for bad in [r#"{"exp":99999999999999999999}"#, r#"{"exp":1000.0}"#] {
            assert_eq!(checked(bad, &c, 0), Err("malformed time claim"), "{bad}");
        }
    }

    #[test]
    fn issuer_audience_and_required_claims() {
        let c = config(
            r#"{"key_set":"k","algorithms":["HS256"],"issuer":["a","b"],"audience":"api","required_claims":["sub","ex\"tra"]}"#,
        );
        let ok = r#"{"sub":"s","ex\"tra":1,"iss":"b","aud":"api"}"#;
        assert_eq!(checked(ok, &c, 0), Ok(()));
        assert_eq!(
            checked(
                r#"{"sub":"s","ex\u0022tra":1,"iss":"b","aud":["x",3,"api"]}"#,
                &c,
                0
            ),
            Ok(()),
            "escaped names and audience lists"
        );
        assert_eq!(
            checked(r#"{"sub":"s","ex\"tra":1,"iss":"c","aud":"api"}"#, &c, 0),
            Err("wrong issuer")
        );
        assert_eq!(
            checked(r#"{"sub":"s","ex\"tra":1,"iss":["b"],"aud":"api"}"#, &c, 0),
            Err("wrong issuer")
        );
        for aud in [r#""apix""#, r#"["x"]"#, r#"{"api":1}"#, "null"] {
            let claims = format!(r#"{{"sub":"s","ex\"tra":1,"iss":"a","aud":{aud}}}"#);
            assert_eq!(checked(&claims, &c, 0), Err("wrong audience"), "{aud}");
        }
        assert_eq!(
            checked(r#"{"sub":"s","iss":"a","aud":"api"}"#, &c, 0),
            Err("missing required claim")
        );
    }

    #[test]
    fn forwarded_claim_values() {
        let claims = Claims::parse(
            br#"{"s":"al\u0069ce","n":42,"f":1.5,"b":true,"o":{"x":1},"c":"a\nb","e":""}"#,
        )
        .unwrap();
        assert_eq!(claims.header_value("s").as_deref(), Some("alice"));
        assert_eq!(claims.header_value("n").as_deref(), Some("42"));
        assert_eq!(claims.header_value("f").as_deref(), Some("1.5"));
        assert_eq!(claims.header_value("b").as_deref(), Some("true"));
        for none in ["o", "c", "e", "missing"] {
            assert_eq!(claims.header_value(none), None, "{none}");
        }
        assert_eq!(claims.str("s").as_deref(), Some("alice"));
        assert_eq!(claims.str("n"), None);
        let claims =
            Claims::parse(br#"{ "q" : "say \"hi\"" , "p":"plain" , "u":"caf\u00e9", "z":"" }"#)
                .unwrap();
        assert_eq!(claims.str("q").as_deref(), Some(r#"say "hi""#));
        assert!(matches!(claims.str("p"), Some(Cow::Borrowed("plain"))));
        assert_eq!(claims.str("u").as_deref(), Some("café"));
        assert_eq!(claims.str("z").as_deref(), Some(""));
        assert_eq!(claims.header_value("q").as_deref(), Some(r#"say "hi""#));
        assert_eq!(claims.header_value("u"), None, "not ASCII");
    }
}
