//! Cache keys: what makes two requests share a stored response.
//!
//! A primary key is `URL NUL scheme NUL parts...`, where URL is the
//! normalised host, a newline, the path and the query as the route keys it.
//! The URL comes first and ends at the first NUL (which no host, path or
//! query can hold) so the storage can group every response for one URL in
//! one family; the parts after it (scheme, the route's key headers and
//! cookies, parts added by filters) are length-framed, so no two different
//! lists of parts make the same bytes.

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, VarianceBuilder};
use pingora::http::RequestHeader;
use policies::{CachePolicy, QueryKey};

/// The URL identity: `host \n path [? query]`.
pub fn url_identity(host: &str, path: &str, query: Option<&str>, mode: QueryKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(host.len() + path.len() + 2 + query.map_or(0, str::len));
    out.extend_from_slice(host.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(path.as_bytes());
    match (query.filter(|q| !q.is_empty()), mode) {
        (None, _) | (_, QueryKey::Ignore) => {}
        (Some(q), QueryKey::Keep) => {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        (Some(q), QueryKey::Sort) => {
            let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            // Stable: repeated names keep their order (`a=1&a=2` ≠ `a=2&a=1`).
            pairs.sort_by_key(|p| p.split_once('=').map_or(*p, |(n, _)| n));
            out.push(b'?');
            for (i, p) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(b'&');
                }
                out.extend_from_slice(p.as_bytes());
            }
        }
    }
    out
}

/// Read access to a request's header values. The key and variance rules
/// read requests through it, so one implementation serves both Pingora's
/// parsed [`RequestHeader`] and the hit lane's raw `httparse` view
/// (`proxy::lane`), which answers fresh hits without building one.
pub trait HeaderValues {
    /// Every value of header `name` (given in lower case), in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The first value of header `name`.
    fn first<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.values(name).next()
    }
}

impl HeaderValues for RequestHeader {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.get_all(name).iter().map(|v| v.as_bytes())
    }
}

/// `name`'s values joined by `,`, each trimmed (how a key or variance
/// sees a header).
fn joined<R: HeaderValues + ?Sized>(req: &R, name: &str) -> Vec<u8> {
    let mut value = Vec::new();
    for (i, v) in req.values(name).enumerate() {
        if i > 0 {
            value.push(b',');
        }
        value.extend_from_slice(v.trim_ascii());
    }
    value
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.push(0);
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a, R: HeaderValues + ?Sized>(req: &'a R, name: &str) -> Option<&'a [u8]> {
    req.values("cookie")
        .flat_map(|v| v.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// The primary key of a request.
pub fn primary<R: HeaderValues + ?Sized>(
    url: &[u8],
    tls: bool,
    req: &R,
    policy: &CachePolicy,
    filter_parts: &[String],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(url.len() + 16);
    out.extend_from_slice(url);
    push_part(&mut out, if tls { b"https" } else { b"http" });
    for h in &policy.key_headers {
        push_part(&mut out, &joined(req, h));
    }
    for c in &policy.key_cookies {
        push_part(&mut out, cookie(req, c).unwrap_or_default());
    }
    for p in filter_parts {
        push_part(&mut out, p.as_bytes());
    }
    out
}

/// The header names a stored response varies on (lower case), or `None`
/// when it has `Vary: *`.
pub fn vary_names(meta_headers: &http::HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for v in meta_headers.get_all(http::header::VARY) {
        for name in v.to_str().unwrap_or("*").split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// The variance of `req` against a stored response's `Vary`, leaving out
/// the headers in `ignore`.
pub fn variance(meta: &CacheMeta, req: &RequestHeader, ignore: &[String]) -> Option<HashBinary> {
    variance_for(&vary_names(meta.headers())?, req, ignore)
}

/// [`variance`] from the stored response's [`vary_names`].
pub fn variance_for<R: HeaderValues + ?Sized>(
    names: &[String],
    req: &R,
    ignore: &[String],
) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    for name in names.iter().filter(|n| !ignore.contains(n)) {
        builder.add_owned_name_value(name.clone(), joined(req, name));
    }
    builder.finalize()
}

/// A printable form of a primary key (for `Cache-Status` in debug mode).
pub fn printable(primary: &[u8]) -> String {
    let mut out = String::new();
    let url = crate::cache::storage::url_of(primary);
    out.push_str(&String::from_utf8_lossy(url).replace('\n', ""));
    let mut rest = &primary[url.len()..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let end = (5 + len).min(rest.len());
        out.push('|');
        out.push_str(&String::from_utf8_lossy(&rest[5..end]));
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> CachePolicy {
        CachePolicy {
            max_object_size: 1 << 20,
            key_headers: vec!["x-device".into()],
            key_cookies: vec!["ab".into()],
            query: QueryKey::Keep,
            default_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            allow_set_cookie: false,
            lock_timeout: Duration::from_secs(1),
            honor_client_no_cache: false,
            vary_ignore: Vec::new(),
        }
    }

    #[test]
    fn query_modes() {
        let k = |m| url_identity("h", "/p", Some("b=2&a=1&a=0"), m);
        assert_eq!(k(QueryKey::Keep), b"h\n/p?b=2&a=1&a=0");
        assert_eq!(k(QueryKey::Sort), b"h\n/p?a=1&a=0&b=2");
        assert_eq!(k(QueryKey::Ignore), b"h\n/p");
        assert_eq!(url_identity("h", "/p", Some(""), QueryKey::Keep), b"h\n/p");
    }

    #[test]
    fn key_parts_are_framed_and_picked_from_headers_and_cookies() {
        let mut req = RequestHeader::build("GET", b"/p", None).unwrap();
        req.insert_header("x-device", "mobile").unwrap();
        req.insert_header("cookie", "x=1; ab=blue; y=2").unwrap();
        let p = policy();
        let a = primary(b"h\n/p", false, &req, &p, &[]);
        assert_eq!(printable(&a), "h/p|http|mobile|blue");
        req.insert_header("cookie", "ab=green").unwrap();
        assert_ne!(a, primary(b"h\n/p", false, &req, &p, &[]));
        assert_ne!(a, primary(b"h\n/p", true, &req, &p, &[]));
        // ["ab", "c"] and ["a", "bc"] differ.
        let x = primary(b"u", false, &req, &p, &["ab".into(), "c".into()]);
        let y = primary(b"u", false, &req, &p, &["a".into(), "bc".into()]);
        assert_ne!(x, y);
    }

    #[test]
    fn vary_star_and_lists() {
        let mut h = http::HeaderMap::new();
        h.append("vary", "Accept-Encoding, accept".parse().unwrap());
        h.append("vary", "X-A".parse().unwrap());
        assert_eq!(
            vary_names(&h).unwrap(),
            vec!["accept-encoding", "accept", "x-a"]
        );
        h.append("vary", "*".parse().unwrap());
        assert!(vary_names(&h).is_none());
    }
}
