//! The request and response heads a filter is given, decoded from the
//! contract's `field-map` (one buffer per head; see `filters/wit/filter.wit`).
//!
//! Decoding is lazy and allocation-free: a lookup walks the fixed-size
//! index, comparing names, and only slices the bytes it returns. Malformed
//! input (the host never sends any) reads as fewer fields, never a panic.

use crate::types;

/// The request head: method, path, authority and headers, as the earlier
/// filters on the route left them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    fields: Vec<u8>,
}

/// The response head: status and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    status: u16,
    fields: Vec<u8>,
}

/// The request pseudo-fields, first in every request's field map.
const PSEUDO: usize = 3;

impl Request {
    /// A request head, e.g. to unit-test a filter natively:
    /// `Request::new("GET", "/a?b=c", "example.com", &[("accept", b"*/*")])`.
    /// Header names are lower-cased.
    pub fn new(
        method: &str,
        path_and_query: &str,
        authority: &str,
        headers: &[(&str, &[u8])],
    ) -> Self {
        let pseudo = [
            (":method", method.as_bytes()),
            (":path", path_and_query.as_bytes()),
            (":authority", authority.as_bytes()),
        ];
        Request {
            fields: encode(pseudo.into_iter().chain(headers.iter().copied())),
        }
    }

    /// `GET`, `POST`, ...
    pub fn method(&self) -> &str {
        self.pseudo(0)
    }

    /// Path and query as sent, e.g. `/api/items?page=2`.
    pub fn path_and_query(&self) -> &str {
        self.pseudo(1)
    }

    /// The host the request was routed by: lower case, no port.
    pub fn authority(&self) -> &str {
        self.pseudo(2)
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        let pq = self.path_and_query();
        pq.split_once('?').map_or(pq, |(p, _)| p)
    }

    /// The value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let (_, query) = self.path_and_query().split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The first value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find(self.headers(), name)
    }

    /// The first value of header `name` as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The headers, in order: `(name, value)`, names lower case.
    pub fn headers(&self) -> Fields<'_> {
        Fields::new(&self.fields).skip_raw(PSEUDO)
    }

    fn pseudo(&self, i: usize) -> &str {
        Fields::new(&self.fields)
            .skip_raw(i)
            .next_raw()
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }
}

impl ResponseHead {
    /// A response head, e.g. to unit-test a filter natively. Header names
    /// are lower-cased.
    pub fn new(status: u16, headers: &[(&str, &[u8])]) -> Self {
        ResponseHead {
            status,
            fields: encode(headers.iter().copied()),
        }
    }

    /// HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find(self.headers(), name)
    }

    /// The first value of header `name` as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The headers, in order: `(name, value)`, names lower case.
    pub fn headers(&self) -> Fields<'_> {
        Fields::new(&self.fields)
    }
}

impl From<types::RequestHead> for Request {
    fn from(head: types::RequestHead) -> Self {
        Request {
            fields: head.fields,
        }
    }
}

impl From<types::ResponseHead> for ResponseHead {
    fn from(head: types::ResponseHead) -> Self {
        ResponseHead {
            status: head.status,
            fields: head.fields,
        }
    }
}

/// The first value of `name`, comparing bytes (no UTF-8 check per name).
fn find<'a>(mut fields: Fields<'a>, name: &str) -> Option<&'a [u8]> {
    while let Some((n, v)) = fields.next_raw() {
        if n == name.as_bytes() {
            return Some(v);
        }
    }
    None
}

/// Encodes fields as a `field-map`, lower-casing names.
fn encode<'a>(fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone) -> Vec<u8> {
    let n = fields.clone().count();
    let bytes: usize = fields.clone().map(|(k, v)| k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + 8 * n + bytes);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in fields.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in fields {
        out.extend(k.bytes().map(|b| b.to_ascii_lowercase()));
        out.extend_from_slice(v);
    }
    out
}

/// The fields of a head, in order: `(name, value)`.
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    /// The `(name-len, value-len)` pairs not yet read.
    index: &'a [u8],
    /// The bytes of the fields not yet read.
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(map: &'a [u8]) -> Self {
        let empty = Fields {
            index: &[],
            data: &[],
        };
        let Some(count) = map.get(..4).map(le) else {
            return empty;
        };
        let Some(index_end) = (count as usize)
            .checked_mul(8)
            .and_then(|b| b.checked_add(4))
        else {
            return empty;
        };
        match (map.get(4..index_end), map.get(index_end..)) {
            (Some(index), Some(data)) => Fields { index, data },
            _ => empty,
        }
    }

    /// Past the next `n` fields, without decoding their names.
    fn skip_raw(mut self, n: usize) -> Self {
        for _ in 0..n {
            self.next_raw();
        }
        self
    }

    fn next_raw(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let (entry, index) = self.index.split_at_checked(8)?;
        let (name_len, value_len) = (le(&entry[..4]) as usize, le(&entry[4..]) as usize);
        let (name, rest) = self.data.split_at_checked(name_len)?;
        let (value, rest) = rest.split_at_checked(value_len)?;
        self.index = index;
        self.data = rest;
        Some((name, value))
    }
}

fn le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, value) = self.next_raw()?;
        Some((std::str::from_utf8(name).unwrap_or(""), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_what_it_was_built_from() {
        let r = Request::new(
            "POST",
            "/a/b?x=1&y",
            "example.com",
            &[
                ("Accept", b"*/*"),
                ("x-two", b"1"),
                ("x-two", b"\xff2"),
                ("empty", b""),
            ],
        );
        assert_eq!(
            (r.method(), r.path_and_query(), r.authority()),
            ("POST", "/a/b?x=1&y", "example.com")
        );
        assert_eq!(r.path(), "/a/b");
        assert_eq!(
            (r.query_param("x"), r.query_param("y"), r.query_param("z")),
            (Some("1"), Some(""), None)
        );
        assert_eq!(r.header("accept"), Some(&b"*/*"[..]));
        assert_eq!(r.header("x-two"), Some(&b"1"[..]));
        assert_eq!(r.header("empty"), Some(&b""[..]));
        assert_eq!(r.header(":method"), None, "pseudo-fields are not headers");
        let all: Vec<_> = r.headers().collect();
        assert_eq!(
            all,
            [
                ("accept", &b"*/*"[..]),
                ("x-two", b"1"),
                ("x-two", b"\xff2"),
                ("empty", b"")
            ]
        );
        let resp = ResponseHead::new(404, &[("content-type", b"text/plain")]);
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.header_str("content-type"), Some("text/plain"));
        assert_eq!(resp.headers().count(), 1);
    }

    #[test]
    fn the_wire_layout_is_the_contracts() {
        let r = ResponseHead::new(200, &[("host", b"example.com"), ("accept", b"*/*")]);
        let mut want = Vec::new();
        for n in [2u32, 4, 11, 6, 3] {
            want.extend_from_slice(&n.to_le_bytes());
        }
        want.extend_from_slice(b"hostexample.comaccept*/*");
        assert_eq!(r.fields, want);
    }

    #[test]
    fn malformed_maps_read_as_fewer_fields() {
        let good = Request::new("GET", "/", "h", &[("a", b"1"), ("b", b"2")]).fields;
        for cut in 0..good.len() {
            let r = Request {
                fields: good[..cut].to_vec(),
            };
            // Never panics; whatever is complete is still read.
            let n = r.headers().count();
            assert!(n <= 2);
            let _ = (r.method(), r.path(), r.header("b"));
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request { fields: huge }.headers().count(), 0);
        let mut long = good;
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request { fields: long }.method(), "");
    }
}
