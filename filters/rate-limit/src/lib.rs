//! First-party filter `rate-limit`: takes one cell per request from a
//! host-held GCRA bucket (`[rate_limits.NAME]`), keyed by the client IP, a
//! header, the principal set by an auth filter, or the route. Over the limit
//! the request gets 429 with `Retry-After` and the IETF `RateLimit` /
//! `RateLimit-Policy` headers (draft-ietf-httpapi-ratelimit-headers).
//!
//! ```toml
//! [rate_limits.per-user]
//! rate = 5          # per second
//! burst = 5
//!
//! [[routes.filters]]
//! module = "rate-limit"
//! rate_limits = ["per-user"]
//! config = { bucket = "per-user", key = "principal" }
//! # key: "ip" (default) | "principal" | "route" | "header:<name>"
//! # trusted_proxies = ["10.0.0.0/8"]: with key "ip", take the client from
//! #   X-Forwarded-For when the peer is one of these
//! ```

use edgegate_filter_sdk::{
    context, export_filter, log, rate_limit, Filter, Phases, Request, RequestDecision, Response,
};
use serde::Deserialize;
use std::net::IpAddr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    bucket: String,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default = "one")]
    cost: u32,
}

fn default_key() -> String {
    "ip".into()
}

fn one() -> u32 {
    1
}

/// The route's config, parsed once per instance: in `phases`, which a
/// recycled instance runs before its snapshot, so its requests start with
/// the parsed config and skip the parse.
fn config() -> &'static Config {
    static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(parse_config)
}

fn parse_config() -> Config {
    match serde_json::from_str::<Config>(&context::config()) {
        Ok(c)
            if c.key == "ip"
                || c.key == "principal"
                || c.key == "route"
                || c.key.starts_with("header:") =>
        {
            if let Some(bad) = c.trusted_proxies.iter().find(|p| Cidr::parse(p).is_none()) {
                fail(&format!(
                    "`trusted_proxies`: `{bad}` is not an address or CIDR"
                ));
            }
            c
        }
        Ok(c) => fail(&format!(
            "`key` must be ip, principal, route or header:<name>, got `{}`",
            c.key
        )),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(why: &str) -> ! {
    log::write(
        log::Level::Error,
        &format!("invalid `rate-limit` config: {why}"),
    );
    panic!("invalid `rate-limit` config: {why}");
}

struct Cidr {
    net: IpAddr,
    bits: u32,
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Cidr { net: addr, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        fn prefix(a: u128, b: u128, bits: u32, width: u32) -> bool {
            if bits == 0 {
                return true;
            }
            let shift = width - bits;
            (a >> shift) == (b >> shift)
        }
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                prefix(u32::from(n) as u128, u32::from(i) as u128, self.bits, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => prefix(u128::from(n), u128::from(i), self.bits, 128),
            _ => false,
        }
    }
}

/// The client address: the peer, or, when the peer is a trusted proxy, the
/// right-most X-Forwarded-For entry that is not one.
fn client_ip(request: &Request, trusted: &[Cidr]) -> String {
    let peer = context::client_ip();
    let is_trusted = |ip: &str| {
        ip.parse::<IpAddr>()
            .is_ok_and(|a| trusted.iter().any(|c| c.contains(a)))
    };
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let Some(xff) = request.header_str("x-forwarded-for") else {
        return peer;
    };
    xff.rsplit(',')
        .map(str::trim)
        .find(|ip| !is_trusted(ip))
        .map(str::to_string)
        .unwrap_or(peer)
}

fn key(request: &Request, c: &Config) -> String {
    match c.key.as_str() {
        "principal" => context::principal()
            .map(|p| format!("principal:{p}"))
            .unwrap_or_else(|| format!("anonymous:{}", context::client_ip())),
        "route" => format!("route:{}", context::route_name()),
        k if k.starts_with("header:") => {
            let name = &k["header:".len()..];
            request
                .header_str(&name.to_ascii_lowercase())
                .map(|v| format!("h:{v}"))
                .unwrap_or_else(|| format!("noheader:{}", context::client_ip()))
        }
        _ => {
            let trusted: Vec<Cidr> = c
                .trusted_proxies
                .iter()
                .filter_map(|p| Cidr::parse(p))
                .collect();
            format!("ip:{}", client_ip(request, &trusted))
        }
    }
}

fn secs_ceil(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

struct RateLimit;

impl Filter for RateLimit {
    fn phases() -> Phases {
        config();
        Phases::REQUEST_HEAD
    }

    fn on_request(request: Request) -> RequestDecision {
        let c = config();
        match rate_limit::check(&c.bucket, &key(&request, c), c.cost) {
            Ok(rate_limit::Outcome::Allowed(_)) => RequestDecision::Continue,
            Ok(rate_limit::Outcome::Limited(l)) => {
                let window = secs_ceil(l.state.reset_after_ms);
                let retry = secs_ceil(l.retry_after_ms);
                RequestDecision::Respond(
                    Response::text(429, "too many requests\n")
                        .with_header("retry-after", retry.to_string())
                        .with_header(
                            "ratelimit-policy",
                            format!("\"{}\";q={};w={window}", c.bucket, l.state.limit),
                        )
                        .with_header("ratelimit", format!("\"{}\";r=0;t={retry}", c.bucket)),
                )
            }
            Err(e) => {
                log::write(
                    log::Level::Error,
                    &format!("rate-limit check on `{}` failed: {e:?}", c.bucket),
                );
                panic!("rate-limit bucket `{}` unusable: {e:?}", c.bucket);
            }
        }
    }
}

export_filter!(RateLimit);

/// A per-request arena: every call ends with the instance reset or
/// discarded, so nothing needs freeing (`RequestArena`'s docs); 14 KiB keeps
/// the component at one 64 KiB page.
#[global_allocator]
static ALLOC: edgegate_filter_sdk::RequestArena<14336> = edgegate_filter_sdk::RequestArena::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.1.2.3".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }
}
