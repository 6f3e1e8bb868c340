//! First-party filter `image-transform`: resizes, crops, pads, rotates and
//! re-encodes images fetched from the origin, from options on the image's
//! own URL (`/img/photo.jpg?width=400&quality=80&format=auto`).
//!
//! - Request phase: options are parsed and checked (unknown or bad options
//!   answer 400 naming the option), a signed URL is checked when the route
//!   asks for signatures (403 otherwise), the options are stripped from the
//!   path sent to the origin, and the canonical options plus what the client
//!   accepts become cache-key parts, so each variant is cached apart.
//! - Body phase: decode guards run on the header before any pixel buffer is
//!   allocated (input bytes → 413, source pixels → 422, animation or an
//!   unknown format → 415, corrupt data → 502), then the transform; metadata
//!   is dropped (EXIF orientation applied first), `Vary: Accept` is added for
//!   `format=auto`, and the origin's caching headers carry over (its ETag,
//!   which named the original bytes, is dropped).
//!
//! ```toml
//! [[routes.filters]]
//! module = "image-transform"
//! timeout = "2s"
//! memory = "256MiB"
//! config = { max_input_bytes = 20971520, max_source_pixels = 40000000, max_dimension = 4096, quality = 80 }
//! # signed URLs: HMAC-SHA256 (base64url) over `PATH?CANONICAL_OPTIONS`, any listed key.
//! # config_file = "image-keys.toml"   # signing_keys = ["current", "previous"]
//! ```

pub mod options;
pub mod transform;

use edgegate_filter_sdk::{
    context, export_filter, log, BodyDecision, BodyReplacement, Filter, Header, HeaderEdits,
    Phases, Request, RequestDecision, RequestEdits, Response, ResponseHead,
};
use hmac::{Hmac, Mac};
use options::Options;
use serde::Deserialize;
use transform::{Failure, Limits};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    max_input_bytes: usize,
    max_source_pixels: u64,
    max_dimension: u32,
    quality: u8,
    /// HMAC keys; when any is set, every transform request must be signed.
    signing_keys: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_input_bytes: 20 << 20,
            max_source_pixels: 40_000_000,
            max_dimension: 4096,
            quality: 80,
            signing_keys: Vec::new(),
        }
    }
}

fn config() -> Config {
    match serde_json::from_str(&context::config()) {
        Ok(c) => c,
        Err(e) => {
            log::write(
                log::Level::Error,
                &format!("invalid `image-transform` config: {e}"),
            );
            panic!("invalid `image-transform` config: {e}");
        }
    }
}

/// The signature of `message` under `key`, base64url without padding.
pub fn sign(key: &[u8], message: &str) -> String {
    use base64::Engine as _;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn signed_by_any(keys: &[String], message: &str, sig: &str) -> bool {
    use base64::Engine as _;
    let Ok(given) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    keys.iter().any(|k| {
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(k.as_bytes()).expect("HMAC takes any key length");
        mac.update(message.as_bytes());
        mac.verify_slice(&given).is_ok()
    })
}

const LABEL_OPTIONS: &str = "image.options";
const LABEL_WEBP: &str = "image.webp";

struct ImageTransform;

impl Filter for ImageTransform {
    fn phases() -> Phases {
        let _ = config();
        Phases::REQUEST_HEAD | Phases::RESPONSE_BODY
    }

    fn on_request(request: Request) -> RequestDecision {
        let c = config();
        let query = request
            .path_and_query()
            .split_once('?')
            .map_or("", |(_, q)| q);
        let o = match Options::parse(query, c.max_dimension) {
            Ok(None) => return RequestDecision::Continue,
            Ok(Some(o)) => o,
            Err(e) => return RequestDecision::Respond(Response::text(400, &format!("{}\n", e.0))),
        };
        let canonical = o.canonical();
        let path = request.path().to_string();
        if !c.signing_keys.is_empty() {
            let message = format!("{path}?{canonical}");
            let ok = o
                .sig
                .as_deref()
                .is_some_and(|s| signed_by_any(&c.signing_keys, &message, s));
            if !ok {
                return RequestDecision::Respond(Response::text(
                    403,
                    "this image URL is not signed, or badly signed\n",
                ));
            }
        }
        let webp = request
            .header_str("accept")
            .is_some_and(options::accepts_webp);
        let auto = o.format == Some(options::Format::Auto);
        // Only `auto` depends on Accept; other variants share one entry.
        let accept_part = if auto {
            if webp {
                "webp"
            } else {
                "no-webp"
            }
        } else {
            "-"
        };
        RequestDecision::Edit(RequestEdits {
            rewrite_path: Some(path),
            labels: vec![
                (LABEL_OPTIONS.into(), canonical.clone()),
                (LABEL_WEBP.into(), if webp { "1" } else { "0" }.into()),
            ],
            cache_key: vec![format!("image:{canonical}"), accept_part.into()],
            ..Default::default()
        })
    }

    fn on_response_body(_request: Request, response: ResponseHead, body: Vec<u8>) -> BodyDecision {
        let Some(canonical) = context::label(LABEL_OPTIONS) else {
            return BodyDecision::Continue;
        };
        if response.status() != 200 {
            return BodyDecision::Continue;
        }
        let c = config();
        let Ok(Some(o)) = Options::parse(&canonical, c.max_dimension) else {
            return BodyDecision::Continue;
        };
        let is_image = response.headers().any(|(name, value)| {
            name == "content-type"
                && (value.starts_with(b"image/") || value.starts_with(b"application/octet-stream"))
        });
        if !is_image {
            return BodyDecision::Continue;
        }
        let webp = context::label(LABEL_WEBP).as_deref() == Some("1");
        let limits = Limits {
            max_input_bytes: c.max_input_bytes,
            max_source_pixels: c.max_source_pixels,
            max_dimension: c.max_dimension,
        };
        match transform::transform(&body, &o, webp, c.quality, &limits) {
            Ok((out, target)) => {
                let mut set = vec![Header::new("content-type", target.content_type())];
                let mut append = Vec::new();
                if o.format == Some(options::Format::Auto) {
                    append.push(Header::new("vary", "Accept"));
                }
                set.push(Header::new("x-image-transform", &canonical));
                BodyDecision::Replace(BodyReplacement {
                    status: None,
                    headers: HeaderEdits {
                        remove: vec!["etag".into(), "content-disposition".into()],
                        set,
                        append,
                    },
                    body: out,
                })
            }
            Err(f) => {
                let (status, reason) = f.status();
                if matches!(f, Failure::Corrupt(_)) {
                    log::write(log::Level::Warn, reason);
                }
                BodyDecision::Replace(BodyReplacement {
                    status: Some(status),
                    headers: HeaderEdits {
                        remove: vec!["etag".into(), "last-modified".into()],
                        set: vec![
                            Header::new("content-type", "text/plain; charset=utf-8"),
                            Header::new("cache-control", "no-store"),
                        ],
                        append: Vec::new(),
                    },
                    body: format!("{reason}\n").into_bytes(),
                })
            }
        }
    }
}

export_filter!(ImageTransform);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_accept_any_listed_key() {
        let keys = vec![
            "old-key-0123456789".to_string(),
            "new-key-0123456789".to_string(),
        ];
        let msg = "/img/a.jpg?width=400";
        assert!(signed_by_any(&keys, msg, &sign(b"old-key-0123456789", msg)));
        assert!(signed_by_any(&keys, msg, &sign(b"new-key-0123456789", msg)));
        assert!(!signed_by_any(&keys, msg, &sign(b"other", msg)));
        assert!(!signed_by_any(
            &keys,
            "/img/a.jpg?width=401",
            &sign(b"new-key-0123456789", msg)
        ));
        assert!(!signed_by_any(&keys, msg, "%%%"));
    }
}
