//! Write edgegate filters in Rust.
//!
//! A filter is a WebAssembly component that edgegate runs on a route, in
//! order with the route's other filters, in an instance no earlier request
//! left anything in (fresh, or reset to its instantiated state) and under
//! the route's CPU deadline and memory cap. This crate
//! wraps the WIT contract `edgegate:filter@0.2.0` (`filters/wit/filter.wit`)
//! in one trait and one macro.
//!
//! # Quick start
//!
//! ```toml
//! # Cargo.toml
//! [lib]
//! crate-type = ["cdylib"]
//! [dependencies]
//! edgegate-filter-sdk = { path = "../sdk" }
//! ```
//!
//! ```ignore
//! use edgegate_filter_sdk::{export_filter, Filter, Phases, Request, RequestDecision, Response};
//!
//! struct DenyAdmin;
//!
//! impl Filter for DenyAdmin {
//!     fn phases() -> Phases {
//!         Phases::REQUEST_HEAD
//!     }
//!
//!     fn on_request(req: Request) -> RequestDecision {
//!         if req.path().starts_with("/admin") {
//!             return RequestDecision::Respond(Response::text(403, "forbidden\n"));
//!         }
//!         RequestDecision::Continue
//!     }
//! }
//!
//! export_filter!(DenyAdmin);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm`
//! in `target/wasm32-wasip2/release/` is the component. Link with a small
//! stack (`.cargo/config.toml`: `[target.wasm32-wasip2] rustflags =
//! ["-C", "link-arg=-zstack-size=65536"]`, as `edgegate filter new` sets up):
//! every request starts from a freshly reset memory, and a guest with less
//! memory is reset faster (a 1 MiB default stack doubled the per-request
//! cost, and a component starting with more than 256 KiB gets fresh
//! instances instead of recycled ones).
//! Keep a call's heap within the memory the component starts with (the
//! stack, the data, and what is left of the first pages after them): a call
//! that grows linear memory pays for resizing a pooled memory on every
//! request, ~9 µs here, and its instance cannot be recycled. `edgegate filter test` prints what each call used
//! and says when it grew; in production
//! `edgegate_filter_memory_grows_total` counts such calls. A filter that
//! allocates little per request can make [`RequestArena`] its global
//! allocator: allocation becomes a pointer bump, since the gateway resets
//! the whole memory after each call anyway (the first-party header filters
//! do, with a 16 KiB stack, so they start with one 64 KiB page).
//! Attach it to a route:
//!
//! ```toml
//! [[routes]]
//! name = "api"
//! upstream = "app"
//! [[routes.filters]]
//! path = "deny_admin.wasm"
//! ```
//!
//! Test it locally under production limits with
//! `edgegate filter test --component deny_admin.wasm --request req.http`.
//! Logic that makes no host call can also be unit-tested natively
//! (`cargo test --target x86_64-unknown-linux-gnu`), on heads built with
//! [`Request::new`] and [`ResponseHead::new`]:
//!
//! ```ignore
//! let req = Request::new("GET", "/admin/users", "example.com", &[("accept", b"*/*")]);
//! assert!(matches!(DenyAdmin::on_request(req), RequestDecision::Respond(_)));
//! ```
//!
//! # What a filter can reach
//!
//! Only the host: [`log`], [`clock`], [`context`] (client IP, route, request
//! id, its own config as JSON, the principal set by earlier filters), and,
//! when the route grants them, [`rate_limit`] (host-held GCRA buckets) and
//! [`crypto`] (signature checks by the host with host-held keys). No files,
//! no sockets. Nothing survives the request: keep state in the host.

#![deny(missing_docs)]

mod arena;
mod fields;
pub use arena::RequestArena;
pub use fields::{Fields, Request, ResponseHead};

/// The generated bindings of `edgegate:filter@0.2.0` (for the export macro).
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs, clippy::too_many_arguments)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "filter",
        pub_export_macro: true,
        export_macro_name: "__export_filter_world",
        default_bindings_module: "edgegate_filter_sdk::bindings",
    });
}

use bindings::edgegate::filter::types;

pub use types::{
    BodyDecision, BodyReplacement, Header, HeaderEdits, LogLevel, Phases, RequestDecision,
    RequestEdits, Response, ResponseDecision, ResponseEdits,
};

/// Logging into the gateway's log (tagged with route and filter).
pub mod log {
    pub use crate::bindings::edgegate::filter::log::write;
    pub use crate::types::LogLevel as Level;
}

/// Wall-clock time.
pub mod clock {
    pub use crate::bindings::edgegate::filter::clock::now_unix_ms;
}

/// Facts about the request being served, and this filter's config.
pub mod context {
    pub use crate::bindings::edgegate::filter::context::*;
}

/// Host-held rate-limit buckets (granted per route).
pub mod rate_limit {
    pub use crate::bindings::edgegate::filter::rate_limit::*;
}

/// Signature verification by the host (granted per route).
pub mod crypto {
    pub use crate::bindings::edgegate::filter::crypto::*;
}

/// A filter. Implement the phases you list in [`Filter::phases`]; the
/// others are never called.
pub trait Filter {
    /// The phases this filter takes part in. Called when the gateway loads
    /// the filter; [`context::config`] is readable here, so the answer may
    /// depend on the route's configuration.
    ///
    /// It is also the place to parse that config once: where the gateway
    /// recycles instances it runs `phases` in each new one, before any
    /// request and with no request in [`context`], and every request in
    /// that instance starts from the memory `phases` left. A config kept in
    /// a `static` `OnceLock` filled here is parsed once per instance rather
    /// than once per request (the first-party filters do this):
    ///
    /// ```ignore
    /// fn config() -> &'static Config {
    ///     static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    ///     CONFIG.get_or_init(|| serde_json::from_str(&context::config()).unwrap())
    /// }
    /// fn phases() -> Phases {
    ///     config();
    ///     Phases::REQUEST_HEAD
    /// }
    /// ```
    fn phases() -> Phases;

    /// Runs for each request, before the cache and the upstream.
    fn on_request(_request: Request) -> RequestDecision {
        RequestDecision::Continue
    }

    /// Runs for each response head, in reverse route order.
    fn on_response(_request: Request, _response: ResponseHead) -> ResponseDecision {
        ResponseDecision::Continue
    }

    /// Runs with the whole response body (only with [`Phases::RESPONSE_BODY`]).
    fn on_response_body(
        _request: Request,
        _response: ResponseHead,
        _body: Vec<u8>,
    ) -> BodyDecision {
        BodyDecision::Continue
    }
}

/// Exports `$t` (a type implementing [`Filter`]) as the component's filter.
#[macro_export]
macro_rules! export_filter {
    ($t:ty) => {
        #[doc(hidden)]
        pub struct __EdgegateFilterExport;

        impl $crate::bindings::Guest for __EdgegateFilterExport {
            fn phases() -> $crate::Phases {
                <$t as $crate::Filter>::phases()
            }
            fn on_request(
                request: $crate::bindings::edgegate::filter::types::RequestHead,
            ) -> $crate::RequestDecision {
                <$t as $crate::Filter>::on_request(request.into())
            }
            fn on_response(
                request: $crate::bindings::edgegate::filter::types::RequestHead,
                response: $crate::bindings::edgegate::filter::types::ResponseHead,
            ) -> $crate::ResponseDecision {
                <$t as $crate::Filter>::on_response(request.into(), response.into())
            }
            fn on_response_body(
                request: $crate::bindings::edgegate::filter::types::RequestHead,
                response: $crate::bindings::edgegate::filter::types::ResponseHead,
                body: ::std::vec::Vec<u8>,
            ) -> $crate::BodyDecision {
                <$t as $crate::Filter>::on_response_body(request.into(), response.into(), body)
            }
        }

        $crate::bindings::__export_filter_world!(__EdgegateFilterExport with_types_in $crate::bindings);
    };
}

impl Header {
    /// A header from a name and text value.
    pub fn new(name: &str, value: impl AsRef<[u8]>) -> Self {
        Header {
            name: name.to_ascii_lowercase(),
            value: value.as_ref().to_vec(),
        }
    }
}

// Generated types: `derive` is not available to us here.
#[allow(clippy::derivable_impls)]
impl Default for HeaderEdits {
    fn default() -> Self {
        HeaderEdits {
            remove: Vec::new(),
            set: Vec::new(),
            append: Vec::new(),
        }
    }
}

// Generated types: `derive` is not available to us here.
#[allow(clippy::derivable_impls)]
impl Default for RequestEdits {
    fn default() -> Self {
        RequestEdits {
            headers: HeaderEdits::default(),
            rewrite_path: None,
            principal: None,
            labels: Vec::new(),
            cache_key: Vec::new(),
        }
    }
}

// Generated types: `derive` is not available to us here.
#[allow(clippy::derivable_impls)]
impl Default for ResponseEdits {
    fn default() -> Self {
        ResponseEdits {
            status: None,
            headers: HeaderEdits::default(),
        }
    }
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            headers: vec![Header::new("content-type", "text/plain; charset=utf-8")],
            body: body.as_bytes().to_vec(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }
}

/// Replaces `{pop}`, `{route}`, `{request_id}`, `{client_ip}`,
/// `{principal}` and `{tls_sni}` in `template` with this request's values
/// (each host call is made only when its placeholder is used).
pub fn render(template: &str) -> String {
    if !template.contains('{') {
        return template.to_string();
    }
    type Lookup = (&'static str, fn() -> String);
    let lookups: [Lookup; 6] = [
        ("{pop}", context::pop_name),
        ("{route}", context::route_name),
        ("{request_id}", context::request_id),
        ("{client_ip}", context::client_ip),
        ("{principal}", || context::principal().unwrap_or_default()),
        ("{tls_sni}", || context::tls_sni().unwrap_or_default()),
    ];
    let mut out = template.to_string();
    for (key, value) in lookups {
        if out.contains(key) {
            out = out.replace(key, &value());
        }
    }
    out
}
