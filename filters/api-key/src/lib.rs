//! First-party filter `api-key`: accepts requests carrying a known API key
//! in a header (default `x-api-key`) or a query parameter. Keys are stored
//! hashed (SHA-256, hex) in the config, never in clear; each has a label,
//! which becomes the request's principal and the `api-key` label.
//!
//! ```toml
//! [[routes.filters]]
//! module = "api-key"
//! config.header = "x-api-key"        # default
//! config.query = "api_key"           # optional; header wins
//! config.keys = [
//!   { sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", label = "team-a" },
//! ]
//! ```
//!
//! Hash a key with `printf %s "$KEY" | sha256sum`. To keep keys in their
//! own file, set `config_file = "api-keys.toml"` on the filter (a file with
//! `keys = [...]`): the gateway merges it into the config, and re-reads it
//! when it changes.

use edgegate_filter_sdk::{
    context, export_filter, log, Filter, Header, HeaderEdits, Phases, Request, RequestDecision,
    RequestEdits, Response,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    sha256: String,
    label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    query: Option<String>,
    keys: Vec<Key>,
    /// Remove the key from the request sent upstream. Default true.
    #[serde(default = "yes")]
    strip: bool,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn yes() -> bool {
    true
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
            &format!("invalid `api-key` config: {why}"),
        );
        panic!("invalid `api-key` config: {why}");
    };
    match serde_json::from_str::<Config>(&context::config()) {
        Ok(c) => {
            if let Some(k) = c.keys.iter().find(|k| decode_hex(&k.sha256).is_none()) {
                fail(format!("key `{}`: `sha256` must be 64 hex digits", k.label));
            }
            c
        }
        Err(e) => fail(e.to_string()),
    }
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// Constant-time equality, so response timing tells nothing about a key.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(why: &str) -> RequestDecision {
    RequestDecision::Respond(
        Response::text(401, &format!("unauthorized: {why}\n"))
            .with_header("www-authenticate", "ApiKey"),
    )
}

struct ApiKey;

impl Filter for ApiKey {
    fn phases() -> Phases {
        config();
        Phases::REQUEST_HEAD
    }

    fn on_request(request: Request) -> RequestDecision {
        let c = config();
        let header = c.header.to_ascii_lowercase();
        let presented = request.header_str(&header).map(str::to_string).or_else(|| {
            c.query
                .as_deref()
                .and_then(|q| request.query_param(q))
                .map(str::to_string)
        });
        let Some(presented) = presented else {
            return unauthorized("missing API key");
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for k in &c.keys {
            if decode_hex(&k.sha256).is_some_and(|h| same(&h, &digest)) {
                found = Some(k.label.clone());
            }
        }
        let Some(label) = found else {
            return unauthorized("unknown API key");
        };
        RequestDecision::Edit(RequestEdits {
            headers: HeaderEdits {
                remove: if c.strip { vec![header] } else { Vec::new() },
                set: vec![Header::new("x-api-key-label", &label)],
                append: Vec::new(),
            },
            principal: Some(label.clone()),
            labels: vec![("api-key".into(), label)],
            cache_key: Vec::new(),
            rewrite_path: None,
        })
    }
}

export_filter!(ApiKey);

/// A per-request arena: every call ends with the instance reset or
/// discarded, so nothing needs freeing (`RequestArena`'s docs); 14 KiB keeps
/// the component at one 64 KiB page.
#[global_allocator]
static ALLOC: edgegate_filter_sdk::RequestArena<14336> = edgegate_filter_sdk::RequestArena::new();
