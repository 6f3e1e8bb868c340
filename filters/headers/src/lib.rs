//! First-party filter `headers`: add, set and remove request and response
//! headers. Values may use `{pop}`, `{route}`, `{request_id}`,
//! `{client_ip}`, `{principal}` and `{tls_sni}`.
//!
//! ```toml
//! [[routes.filters]]
//! module = "headers"
//! config.request.set = { "x-edge-pop" = "{pop}" }
//! config.request.remove = ["x-internal-debug"]
//! config.response.set = { "strict-transport-security" = "max-age=31536000" }
//! config.response.append = { "x-served-by" = "{pop}" }
//! # On a caching route: keep each authenticated user's responses apart.
//! config.cache_key = ["{principal}"]
//! ```

use edgegate_filter_sdk::{
    context, export_filter, log, render, Filter, Header, HeaderEdits, Phases, Request,
    RequestDecision, RequestEdits, ResponseDecision, ResponseEdits, ResponseHead,
};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Edits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    append: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.append.is_empty() && self.remove.is_empty()
    }

    fn render(&self) -> HeaderEdits {
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter().map(|(k, v)| Header::new(k, render(v))).collect()
        };
        HeaderEdits {
            remove: self.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
            set: pairs(&self.set),
            append: pairs(&self.append),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Edits,
    #[serde(default)]
    response: Edits,
    /// Parts added to the cache key (templates, like header values).
    #[serde(default)]
    cache_key: Vec<String>,
}

/// The route's config. It was validated when the filter loaded (a bad one
/// fails `phases`, so the config load), so later calls cannot fail.
/// The route's config, parsed once per instance: in `phases`, which a
/// recycled instance runs before its snapshot, so its requests start with
/// the parsed config and skip the parse.
fn config() -> &'static Config {
    static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(parse_config)
}

fn parse_config() -> Config {
    match serde_json::from_str(&context::config()) {
        Ok(c) => c,
        Err(e) => {
            log::write(log::Level::Error, &format!("invalid `headers` config: {e}"));
            panic!("invalid `headers` config: {e}");
        }
    }
}

struct Headers;

impl Filter for Headers {
    fn phases() -> Phases {
        let c = config();
        let mut p = Phases::empty();
        if !c.request.is_empty() || !c.cache_key.is_empty() {
            p |= Phases::REQUEST_HEAD;
        }
        if !c.response.is_empty() {
            p |= Phases::RESPONSE_HEAD;
        }
        p
    }

    fn on_request(_request: Request) -> RequestDecision {
        let c = config();
        RequestDecision::Edit(RequestEdits {
            headers: c.request.render(),
            cache_key: c.cache_key.iter().map(|t| render(t)).collect(),
            ..Default::default()
        })
    }

    fn on_response(_request: Request, _response: ResponseHead) -> ResponseDecision {
        ResponseDecision::Edit(ResponseEdits {
            headers: config().response.render(),
            ..Default::default()
        })
    }
}

export_filter!(Headers);

/// A per-request arena: every call ends with the instance reset or
/// discarded, so nothing needs freeing (`RequestArena`'s docs); 14 KiB keeps
/// the component at one 64 KiB page.
#[global_allocator]
static ALLOC: edgegate_filter_sdk::RequestArena<14336> = edgegate_filter_sdk::RequestArena::new();
