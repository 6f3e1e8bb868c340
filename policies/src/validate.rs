//! [`RawConfig`] → [`Config`]: every check that can be made without I/O.

use crate::config::*;
use crate::error::{KeyError, PathSeg};
use crate::raw::*;
use crate::route::{HostMatch, PathMatch, Route, RouteTable};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default address of the admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// Walks the raw config keeping the current key path for error messages.
struct Ctx {
    path: Vec<PathSeg>,
}

impl Ctx {
    fn err(&self, key: &str, message: impl Into<String>) -> KeyError {
        let mut path = self.path.clone();
        if !key.is_empty() {
            path.push(PathSeg::Key(key.to_string()));
        }
        KeyError::new(path, message)
    }

    fn scoped<T>(&mut self, seg: PathSeg, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(seg);
        let out = f(self);
        self.path.pop();
        out
    }

    fn duration(
        &self,
        key: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Result<Duration, KeyError> {
        match value {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.err(key, m)),
        }
    }

    fn size(&self, key: &str, value: &Option<String>, default: u64) -> Result<u64, KeyError> {
        match value {
            None => Ok(default),
            Some(s) => parse_size(s).map_err(|m| self.err(key, m)),
        }
    }
}

/// Parses `250ms`, `10s`, `1m 30s`...
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration such as `250ms`, `10s` or `2m`, got `{s}` ({e})"))
}

/// Parses `512`, `16KiB`, `10MiB`, `1GiB`, `64KB` (powers of ten for `KB`/`MB`/`GB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("expected a size such as `512`, `16KiB` or `10MiB`, got `{s}`");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("expected an address such as `0.0.0.0:8080` or `[::]:443`, got `{s}`"))
}

/// `host:port` with a non-empty host and a numeric port.
fn check_host_port(s: &str) -> Result<(), String> {
    let bad = || {
        format!("expected `host:port` such as `10.0.0.5:8080` or `origin.internal:80`, got `{s}`")
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

fn non_zero(
    ctx: &Ctx,
    key: &str,
    v: Option<usize>,
    default: usize,
) -> Result<NonZeroUsize, KeyError> {
    NonZeroUsize::new(v.unwrap_or(default)).ok_or_else(|| ctx.err(key, "must be at least 1"))
}

/// Checks and converts a raw config. `default_threads` is what `threads`
/// falls back to; `default_pop` what `pop.name` falls back to (both come from
/// the machine, so the caller supplies them and this stays pure).
pub(crate) fn validate(
    raw: &RawConfig,
    default_threads: usize,
    default_pop: &str,
    base_dir: &Path,
) -> Result<Config, KeyError> {
    let mut ctx = Ctx { path: Vec::new() };

    let pop_name = match &raw.pop.name {
        Some(n)
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            return Err(ctx.scoped(PathSeg::Key("pop".into()), |c| {
                c.err(
                    "name",
                    format!("must be letters, digits, `-`, `_` or `.`, got `{n}`"),
                )
            }))
        }
        Some(n) => n.clone(),
        None => default_pop.to_string(),
    };

    let server = ctx.scoped(PathSeg::Key("server".into()), |c| {
        let s = &raw.server;
        let request_id_header = s
            .request_id_header
            .clone()
            .unwrap_or_else(|| "x-request-id".into());
        if request_id_header.is_empty()
            || !request_id_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(c.err(
                "request_id_header",
                format!("not a valid header name: `{request_id_header}`"),
            ));
        }
        Ok(Server {
            threads: non_zero(c, "threads", s.threads, default_threads.max(1))?,
            work_stealing: s.work_stealing.unwrap_or(false),
            drain_window: c.duration("drain_window", &s.drain_window, Duration::from_secs(10))?,
            shutdown_timeout: c.duration(
                "shutdown_timeout",
                &s.shutdown_timeout,
                Duration::from_secs(10),
            )?,
            request_id_header: request_id_header.to_ascii_lowercase(),
            h2c: s.h2c.unwrap_or(false),
            hit_lane: s.hit_lane.unwrap_or(true),
            relay: s.relay.unwrap_or(true),
            filter_recycling: s.filter_recycling.unwrap_or(true),
            filter_dir: PathBuf::from(
                s.filter_dir
                    .clone()
                    .unwrap_or_else(|| "/usr/lib/edgegate/filters".into()),
            ),
            filter_cache_dir: s.filter_cache_dir.as_ref().map(|d| base_dir.join(d)),
        })
    })?;

    let log = ctx.scoped(PathSeg::Key("log".into()), |c| {
        let format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(c.err(
                    "format",
                    format!("expected `text` or `json`, got `{other}`"),
                ))
            }
        };
        Ok(Log {
            format,
            access_log: raw.log.access_log.unwrap_or(true),
            level: raw.log.level.clone().unwrap_or_else(|| "info".into()),
        })
    })?;

    let admin = ctx.scoped(PathSeg::Key("admin".into()), |c| {
        let listen = parse_addr(raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN))
            .map_err(|m| c.err("listen", m))?;
        Ok(Admin { listen })
    })?;

    if raw.listeners.is_empty() {
        return Err(ctx.err("listeners", "at least one `[[listeners]]` is required"));
    }
    let mut listeners = Vec::new();
    let mut seen_addrs = HashSet::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let listener = ctx.scoped(PathSeg::Key("listeners".into()), |c| {
            c.scoped(PathSeg::Index(i), |c| validate_listener(c, l, admin.listen))
        })?;
        if !seen_addrs.insert(listener.listen) {
            return Err(ctx.scoped(PathSeg::Key("listeners".into()), |c| {
                c.scoped(PathSeg::Index(i), |c| {
                    c.err(
                        "listen",
                        format!("`{}` is used by another listener", l.listen),
                    )
                })
            }));
        }
        listeners.push(listener);
    }

    let mut upstreams = BTreeMap::new();
    for (name, u) in &raw.upstreams {
        let up = ctx.scoped(PathSeg::Key("upstreams".into()), |c| {
            c.scoped(PathSeg::Key(name.clone()), |c| {
                validate_upstream(c, name, u)
            })
        })?;
        upstreams.insert(name.clone(), up);
    }

    let mut rate_limits = BTreeMap::new();
    for (name, r) in &raw.rate_limits {
        let rl = ctx.scoped(PathSeg::Key("rate_limits".into()), |c| {
            c.scoped(PathSeg::Key(name.clone()), |c| {
                let rate =
                    NonZeroU32::new(r.rate).ok_or_else(|| c.err("rate", "must be at least 1"))?;
                let per = c.duration("per", &r.per, Duration::from_secs(1))?;
                if per.is_zero() {
                    return Err(c.err("per", "must be longer than 0"));
                }
                let burst = NonZeroU32::new(r.burst.unwrap_or(r.rate))
                    .ok_or_else(|| c.err("burst", "must be at least 1"))?;
                Ok(RateLimit {
                    name: name.clone(),
                    rate,
                    per,
                    burst,
                    max_keys: r.max_keys.unwrap_or(100_000).max(1),
                })
            })
        })?;
        rate_limits.insert(name.clone(), rl);
    }
    let mut key_sets = BTreeMap::new();
    for (name, k) in &raw.key_sets {
        let ks = ctx.scoped(PathSeg::Key("key_sets".into()), |c| {
            c.scoped(PathSeg::Key(name.clone()), |c| {
                if k.jwks_file.is_none()
                    && k.jwks_url.is_none()
                    && k.hmac_secrets.is_empty()
                    && k.hmac_secret_files.is_empty()
                {
                    return Err(c.err(
                        "",
                        "a key set needs `jwks_file`, `jwks_url`, `hmac_secrets` or `hmac_secret_files`",
                    ));
                }
                if k.jwks_file.is_some() && k.jwks_url.is_some() {
                    return Err(c.err("jwks_url", "set `jwks_file` or `jwks_url`, not both"));
                }
                if let Some(u) = &k.jwks_url {
                    let ok = (u.starts_with("https://") || u.starts_with("http://")) && u.len() > 8;
                    if !ok {
                        return Err(c.err(
                            "jwks_url",
                            format!("expected an http:// or https:// URL, got `{u}`"),
                        ));
                    }
                }
                let refresh = c.duration("refresh", &k.refresh, Duration::from_secs(300))?;
                if refresh < Duration::from_millis(100) {
                    return Err(c.err("refresh", "must be at least 100ms"));
                }
                if let Some((kid, _)) = k.hmac_secrets.iter().find(|(_, v)| v.len() < 16) {
                    return Err(c.scoped(PathSeg::Key("hmac_secrets".into()), |c| {
                        c.err(kid, "an HMAC secret must be at least 16 bytes")
                    }));
                }
                Ok(KeySet {
                    name: name.clone(),
                    jwks_file: k.jwks_file.as_ref().map(|f| base_dir.join(f)),
                    jwks_url: k.jwks_url.clone(),
                    refresh,
                    hmac_secrets: k.hmac_secrets.clone(),
                    hmac_secret_files: k
                        .hmac_secret_files
                        .iter()
                        .map(|(kid, f)| (kid.clone(), base_dir.join(f)))
                        .collect(),
                })
            })
        })?;
        key_sets.insert(name.clone(), ks);
    }

    if raw.routes.is_empty() {
        return Err(ctx.err("routes", "at least one `[[routes]]` is required"));
    }
    let mut routes = Vec::new();
    let mut names = HashSet::new();
    let mut matchers = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let route = ctx.scoped(PathSeg::Key("routes".into()), |c| {
            c.scoped(PathSeg::Index(i), |c| {
                let route = validate_route(c, r, &upstreams, &rate_limits, &key_sets, base_dir)?;
                if !names.insert(route.name.clone()) {
                    return Err(c.err("name", format!("route name `{}` is used twice", route.name)));
                }
                if !matchers.insert((route.host.clone(), route.path.clone())) {
                    return Err(c.err(
                        "path_prefix",
                        "another route has the same host and path; one of them could never match",
                    ));
                }
                Ok(route)
            })
        })?;
        routes.push(route);
    }

    let cache = ctx.scoped(PathSeg::Key("cache".into()), |c| {
        let k = &raw.cache;
        let size = c.size("size", &k.size, 256 << 20)?;
        if size < (64 << 10) {
            return Err(c.err("size", "must be at least 64KiB"));
        }
        if k.purge_token.is_some() && k.purge_token_file.is_some() {
            return Err(c.err(
                "purge_token_file",
                "set `purge_token` or `purge_token_file`, not both",
            ));
        }
        if let Some(t) = &k.purge_token {
            if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(c.err(
                    "purge_token",
                    "must be at least 16 printable characters without spaces",
                ));
            }
        }
        Ok(CacheSettings {
            size,
            purge_token: k.purge_token.clone(),
            purge_token_file: k.purge_token_file.as_ref().map(|f| base_dir.join(f)),
            debug: k.debug.unwrap_or(false),
        })
    })?;

    Ok(Config {
        cache,
        pop_name,
        server,
        log,
        admin,
        listeners,
        upstreams,
        routes: RouteTable::new(routes),
        rate_limits,
        key_sets,
    })
}

fn validate_listener(
    c: &mut Ctx,
    l: &ListenerConfig,
    admin: SocketAddr,
) -> Result<Listener, KeyError> {
    let listen = parse_addr(&l.listen).map_err(|m| c.err("listen", m))?;
    if listen == admin
        || (listen.port() == admin.port()
            && (listen.ip().is_unspecified() || admin.ip().is_unspecified()))
    {
        return Err(c.err(
            "listen",
            format!(
                "`{}` overlaps the admin listener `{admin}`; admin must have its own address",
                l.listen
            ),
        ));
    }
    let tls = match &l.tls {
        None => None,
        Some(t) => Some(c.scoped(PathSeg::Key("tls".into()), |c| {
            if t.certificates.is_empty() {
                return Err(c.err(
                    "certificates",
                    "a TLS listener needs at least one certificate",
                ));
            }
            let defaults = t
                .certificates
                .iter()
                .filter(|cert| cert.default == Some(true))
                .count();
            if defaults > 1 {
                return Err(c.err(
                    "certificates",
                    "at most one certificate may be `default = true`",
                ));
            }
            let certificates = t
                .certificates
                .iter()
                .enumerate()
                .map(|(i, cert)| {
                    c.scoped(PathSeg::Key("certificates".into()), |c| {
                        c.scoped(PathSeg::Index(i), |c| {
                            if cert.cert.is_empty() {
                                return Err(c.err("cert", "path must not be empty"));
                            }
                            if cert.key.is_empty() {
                                return Err(c.err("key", "path must not be empty"));
                            }
                            Ok(Certificate {
                                cert: PathBuf::from(&cert.cert),
                                key: PathBuf::from(&cert.key),
                                default: cert.default == Some(true) || (defaults == 0 && i == 0),
                            })
                        })
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Tls {
                certificates,
                h2: t.h2.unwrap_or(true),
            })
        })?),
    };
    Ok(Listener {
        name: l.name.clone().unwrap_or_else(|| l.listen.clone()),
        listen,
        tls,
    })
}

fn validate_upstream(c: &mut Ctx, name: &str, u: &UpstreamConfig) -> Result<Upstream, KeyError> {
    if u.backends.is_empty() {
        return Err(c.err("backends", "an upstream group needs at least one backend"));
    }
    let mut seen = HashSet::new();
    for (i, b) in u.backends.iter().enumerate() {
        c.scoped(PathSeg::Key("backends".into()), |c| {
            check_host_port(b).map_err(|m| c.scoped(PathSeg::Index(i), |c| c.err("", m)))?;
            if !seen.insert(b.as_str()) {
                return Err(c.scoped(PathSeg::Index(i), |c| {
                    c.err("", format!("backend `{b}` is listed twice"))
                }));
            }
            Ok(())
        })?;
    }
    let load_balancing = match u.load_balancing.as_deref() {
        None | Some("round_robin") => LoadBalancing::RoundRobin,
        Some("random") => LoadBalancing::Random,
        Some(other) => {
            return Err(c.err(
                "load_balancing",
                format!("expected `round_robin` or `random`, got `{other}`"),
            ))
        }
    };
    let health_check = match &u.health_check {
        None => None,
        Some(h) => Some(c.scoped(PathSeg::Key("health_check".into()), |c| {
            let kind = match (h.kind.as_deref(), &h.path) {
                (None | Some("http"), path) => {
                    let path = path.clone().unwrap_or_else(|| "/".into());
                    if !path.starts_with('/') {
                        return Err(c.err("path", format!("must start with `/`, got `{path}`")));
                    }
                    HealthCheckKind::Http {
                        path,
                        host: h.host.clone().unwrap_or_else(|| "localhost".into()),
                    }
                }
                (Some("tcp"), None) => HealthCheckKind::Tcp,
                (Some("tcp"), Some(_)) => {
                    return Err(c.err("path", "a `tcp` health check has no path"))
                }
                (Some(other), _) => {
                    return Err(c.err("kind", format!("expected `http` or `tcp`, got `{other}`")))
                }
            };
            let interval = c.duration("interval", &h.interval, Duration::from_secs(5))?;
            if interval < Duration::from_millis(10) {
                return Err(c.err("interval", "must be at least 10ms"));
            }
            Ok(HealthCheck {
                kind,
                interval,
                healthy_threshold: non_zero(c, "healthy_threshold", h.healthy_threshold, 1)?,
                unhealthy_threshold: non_zero(c, "unhealthy_threshold", h.unhealthy_threshold, 1)?,
                timeout: c.duration("timeout", &h.timeout, Duration::from_secs(1))?,
            })
        })?),
    };
    let passive = c.scoped(PathSeg::Key("passive".into()), |c| {
        let p = u.passive.clone().unwrap_or_default();
        Ok::<_, KeyError>(PassiveHealth {
            consecutive_failures: NonZeroU32::new(p.consecutive_failures.unwrap_or(1))
                .ok_or_else(|| c.err("consecutive_failures", "must be at least 1"))?,
            eject_for: c.duration("eject_for", &p.eject_for, Duration::from_secs(10))?,
        })
    })?;
    Ok(Upstream {
        name: name.to_string(),
        backends: u.backends.clone(),
        load_balancing,
        tls_sni: u.tls_sni.clone(),
        health_check,
        passive,
        keepalive_timeout: c.duration(
            "keepalive_timeout",
            &u.keepalive_timeout,
            Duration::from_secs(60),
        )?,
    })
}

fn validate_host(c: &Ctx, host: &Option<String>) -> Result<HostMatch, KeyError> {
    let Some(h) = host else {
        return Ok(HostMatch::Any);
    };
    let lower = h.to_ascii_lowercase();
    let valid_label = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if lower == "*" {
        return Ok(HostMatch::Any);
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        if valid_label(suffix) {
            return Ok(HostMatch::Wildcard(format!(".{suffix}")));
        }
    } else if valid_label(&lower) && !lower.contains(':') {
        return Ok(HostMatch::Exact(lower));
    }
    Err(c.err(
        "host",
        format!("expected a host name such as `api.example.com` or `*.example.com` (no port), got `{h}`"),
    ))
}

fn validate_path(c: &Ctx, key: &str, p: &str) -> Result<(), KeyError> {
    if !p.starts_with('/') || p.contains('?') || p.contains('#') {
        return Err(c.err(
            key,
            format!("must start with `/` and hold no query or fragment, got `{p}`"),
        ));
    }
    Ok(())
}

fn validate_filter(
    c: &mut Ctx,
    f: &FilterConfig,
    rate_limits: &BTreeMap<String, RateLimit>,
    key_sets: &BTreeMap<String, KeySet>,
    base_dir: &Path,
) -> Result<FilterSpec, KeyError> {
    let (source, default_name) = match (&f.module, &f.path) {
        (Some(_), Some(_)) => return Err(c.err("path", "set `module` or `path`, not both")),
        (None, None) => {
            return Err(c.err(
                "module",
                "a filter needs `module` (first-party) or `path` (a component file)",
            ))
        }
        (Some(m), None) => {
            if m.is_empty()
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(c.err("module", format!("not a module name: `{m}`")));
            }
            (FilterSource::Module(m.clone()), m.clone())
        }
        (None, Some(p)) => {
            if !p.ends_with(".wasm") {
                return Err(c.err("path", format!("expected a `.wasm` component, got `{p}`")));
            }
            let path = base_dir.join(p);
            let stem = path
                .file_stem()
                .map_or_else(|| p.clone(), |s| s.to_string_lossy().into_owned());
            (FilterSource::Path(path), stem)
        }
    };
    let on_error = match f.on_error.as_deref() {
        None | Some("fail-closed") => OnError::FailClosed,
        Some("fail-open") => OnError::FailOpen,
        Some(other) => {
            return Err(c.err(
                "on_error",
                format!("expected `fail-closed` or `fail-open`, got `{other}`"),
            ))
        }
    };
    let timeout = c.duration("timeout", &f.timeout, Duration::from_millis(20))?;
    if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(10) {
        return Err(c.err("timeout", "must be between 1ms and 10s"));
    }
    let memory = c.size("memory", &f.memory, 16 << 20)?;
    if !((1 << 20)..=(1 << 30)).contains(&memory) {
        return Err(c.err("memory", "must be between 1MiB and 1GiB"));
    }
    for (i, b) in f.rate_limits.iter().enumerate() {
        if !rate_limits.contains_key(b) {
            return Err(c.scoped(PathSeg::Key("rate_limits".into()), |c| {
                c.scoped(PathSeg::Index(i), |c| {
                    c.err("", format!("no `[rate_limits.{b}]` is defined"))
                })
            }));
        }
    }
    for (i, k) in f.key_sets.iter().enumerate() {
        if !key_sets.contains_key(k) {
            return Err(c.scoped(PathSeg::Key("key_sets".into()), |c| {
                c.scoped(PathSeg::Index(i), |c| {
                    c.err("", format!("no `[key_sets.{k}]` is defined"))
                })
            }));
        }
    }
    let config_json = match &f.config {
        None => "{}".to_string(),
        Some(t) => serde_json::to_string(t)
            .map_err(|e| c.err("config", format!("cannot be expressed as JSON: {e}")))?,
    };
    Ok(FilterSpec {
        name: f.name.clone().unwrap_or(default_name),
        source,
        on_error,
        timeout,
        memory_bytes: memory as usize,
        rate_limits: f.rate_limits.clone(),
        key_sets: f.key_sets.clone(),
        config_json,
        config_file: match &f.config_file {
            None => None,
            Some(p) if p.ends_with(".toml") || p.ends_with(".json") => Some(base_dir.join(p)),
            Some(p) => {
                return Err(c.err(
                    "config_file",
                    format!("expected a `.toml` or `.json` file, got `{p}`"),
                ))
            }
        },
    })
}

fn validate_route(
    c: &mut Ctx,
    r: &RouteConfig,
    upstreams: &BTreeMap<String, Upstream>,
    rate_limits: &BTreeMap<String, RateLimit>,
    key_sets: &BTreeMap<String, KeySet>,
    base_dir: &Path,
) -> Result<Route, KeyError> {
    if r.name.is_empty() {
        return Err(c.err("name", "must not be empty"));
    }
    let host = validate_host(c, &r.host)?;
    let path = match (&r.path_prefix, &r.path_exact) {
        (Some(_), Some(_)) => {
            return Err(c.err("path_exact", "set `path_prefix` or `path_exact`, not both"))
        }
        (Some(p), None) => {
            validate_path(c, "path_prefix", p)?;
            PathMatch::Prefix(p.clone())
        }
        (None, Some(p)) => {
            validate_path(c, "path_exact", p)?;
            PathMatch::Exact(p.clone())
        }
        (None, None) => PathMatch::Prefix("/".into()),
    };
    if !upstreams.contains_key(&r.upstream) {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        return Err(c.err(
            "upstream",
            format!(
                "no upstream group named `{}` (defined: {})",
                r.upstream,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    let timeouts = c.scoped(PathSeg::Key("timeouts".into()), |c| {
        let t = &r.timeouts;
        Ok::<_, KeyError>(Timeouts {
            connect: c.duration("connect", &t.connect, Duration::from_secs(2))?,
            read: c.duration("read", &t.read, Duration::from_secs(30))?,
            write: c.duration("write", &t.write, Duration::from_secs(30))?,
        })
    })?;
    let limits = c.scoped(PathSeg::Key("limits".into()), |c| {
        let l = &r.limits;
        let max_header_bytes = c.size("max_header_bytes", &l.max_header_bytes, 32 << 10)?;
        if !(1024..=(1 << 20)).contains(&max_header_bytes) {
            return Err(c.err("max_header_bytes", "must be between 1KiB and 1MiB"));
        }
        Ok::<_, KeyError>(Limits {
            max_header_bytes: max_header_bytes as usize,
            max_body_bytes: c.size("max_body_bytes", &l.max_body_bytes, 16 << 20)?,
        })
    })?;
    let mut filters = Vec::new();
    for (i, f) in r.filters.iter().enumerate() {
        let spec = c.scoped(PathSeg::Key("filters".into()), |c| {
            c.scoped(PathSeg::Index(i), |c| {
                validate_filter(c, f, rate_limits, key_sets, base_dir)
            })
        })?;
        if filters.iter().any(|x: &FilterSpec| x.name == spec.name) {
            return Err(c.scoped(PathSeg::Key("filters".into()), |c| {
                c.scoped(PathSeg::Index(i), |c| {
                    c.err(
                        "name",
                        format!(
                            "two filters on this route are named `{}`; set `name`",
                            spec.name
                        ),
                    )
                })
            }));
        }
        filters.push(spec);
    }
    let cache = match &r.cache {
        None => None,
        Some(rc) => c.scoped(PathSeg::Key("cache".into()), |c| {
            validate_route_cache(c, rc)
        })?,
    };
    Ok(Route {
        cache,
        name: r.name.clone(),
        host,
        path,
        upstream: r.upstream.clone(),
        preserve_host: r.preserve_host.unwrap_or(true),
        retries: r.retries.unwrap_or(1),
        timeouts,
        limits,
        filters,
    })
}

fn validate_route_cache(
    c: &mut Ctx,
    rc: &RouteCacheConfig,
) -> Result<Option<CachePolicy>, KeyError> {
    fn token_list(c: &Ctx, key: &str, names: &[String]) -> Result<Vec<String>, KeyError> {
        let mut out = Vec::new();
        for n in names {
            let ok = !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !ok {
                return Err(c.err(key, format!("`{n}` is not a valid name")));
            }
            out.push(n.clone());
        }
        Ok(out)
    }
    let max_object_size = c.size("max_object_size", &rc.max_object_size, 8 << 20)?;
    if max_object_size == 0 || max_object_size > (1 << 30) {
        return Err(c.err("max_object_size", "must be between 1 byte and 1GiB"));
    }
    let query = match rc.query.as_deref() {
        None | Some("keep") => QueryKey::Keep,
        Some("sort") => QueryKey::Sort,
        Some("ignore") => QueryKey::Ignore,
        Some(other) => {
            return Err(c.err(
                "query",
                format!("expected `keep`, `sort` or `ignore`, got `{other}`"),
            ))
        }
    };
    let default_ttl = match &rc.default_ttl {
        None => None,
        Some(_) => Some(c.duration("default_ttl", &rc.default_ttl, Duration::ZERO)?),
    };
    let lock_timeout = c.duration("lock_timeout", &rc.lock_timeout, Duration::from_secs(5))?;
    if lock_timeout.is_zero() {
        return Err(c.err("lock_timeout", "must be longer than 0"));
    }
    if rc.enabled == Some(false) {
        return Ok(None);
    }
    Ok(Some(CachePolicy {
        max_object_size: max_object_size as usize,
        key_headers: token_list(c, "key_headers", &rc.key_headers)?
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        key_cookies: token_list(c, "key_cookies", &rc.key_cookies)?,
        query,
        default_ttl,
        stale_while_revalidate: c.duration(
            "stale_while_revalidate",
            &rc.stale_while_revalidate,
            Duration::ZERO,
        )?,
        stale_if_error: c.duration("stale_if_error", &rc.stale_if_error, Duration::ZERO)?,
        allow_set_cookie: rc.allow_set_cookie.unwrap_or(false),
        lock_timeout,
        honor_client_no_cache: rc.honor_client_no_cache.unwrap_or(false),
        vary_ignore: token_list(c, "vary_ignore", &rc.vary_ignore)?
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("16KiB"), Ok(16384));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10XB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn host_ports() {
        assert!(check_host_port("127.0.0.1:80").is_ok());
        assert!(check_host_port("origin.internal:8080").is_ok());
        assert!(check_host_port("[::1]:80").is_ok());
        assert!(check_host_port("127.0.0.1").is_err());
        assert!(check_host_port("http://x:80").is_err());
        assert!(check_host_port("x:0").is_err());
    }
}
