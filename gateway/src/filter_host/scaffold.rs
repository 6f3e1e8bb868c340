//! `edgegate filter new NAME`: a filter crate that builds for wasm32-wasip2
//! and passes its test, with the SDK and the WIT contract vendored in (so it
//! builds without this repository and with the exact contract this binary
//! runs).

use std::path::{Path, PathBuf};

const SDK_LIB: &str = include_str!("../../../filters/sdk/src/lib.rs");
const SDK_ARENA: &str = include_str!("../../../filters/sdk/src/arena.rs");
const SDK_FIELDS: &str = include_str!("../../../filters/sdk/src/fields.rs");
const WIT: &str = include_str!("../../../filters/wit/filter.wit");

fn files(name: &str) -> Vec<(String, String)> {
    let lib = name.replace('-', "_");
    vec![
        (
            "Cargo.toml".into(),
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
edgegate-filter-sdk = {{ path = "vendor/edgegate-filter-sdk" }}

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
panic = "abort"

[workspace]
"#
            ),
        ),
        (
            ".cargo/config.toml".into(),
            "[build]\ntarget = \"wasm32-wasip2\"\n\n\
             # A 64 KiB stack (Rust's default is 1 MiB) keeps a filter's memory small:\n\
             # edgegate resets it after every request, and small is fast.\n\
             [target.wasm32-wasip2]\nrustflags = [\"-C\", \"link-arg=-zstack-size=65536\"]\n"
                .into(),
        ),
        (".gitignore".into(), "/target\n".into()),
        (
            "src/lib.rs".into(),
            r#"//! A filter made with `edgegate filter new`: refuses `/admin` with 403 and
//! tags every other request with the PoP that served it.

use edgegate_filter_sdk::{
    context, export_filter, Filter, Header, HeaderEdits, Phases, Request, RequestDecision, RequestEdits,
    Response,
};

struct MyFilter;

impl Filter for MyFilter {
    fn phases() -> Phases {
        Phases::REQUEST_HEAD
    }

    fn on_request(request: Request) -> RequestDecision {
        if request.path() == "/admin" || request.path().starts_with("/admin/") {
            return RequestDecision::Respond(Response::text(403, "forbidden\n"));
        }
        RequestDecision::Edit(RequestEdits {
            headers: HeaderEdits {
                set: vec![Header::new("x-served-by", context::pop_name())],
                ..Default::default()
            },
            ..Default::default()
        })
    }
}

export_filter!(MyFilter);
"#
            .into(),
        ),
        (
            "tests/request.http".into(),
            "GET /admin/panel HTTP/1.1\nHost: example.com\nUser-Agent: curl/8\n\n".into(),
        ),
        (
            "tests/allowed.http".into(),
            "GET /products HTTP/1.1\nHost: example.com\n\n".into(),
        ),
        (
            "README.md".into(),
            format!(
                r#"# {name}

An edgegate filter component.

```sh
rustup target add wasm32-wasip2            # once
cargo build --release                      # -> target/wasm32-wasip2/release/{lib}.wasm
edgegate filter test --component target/wasm32-wasip2/release/{lib}.wasm \
    --request tests/request.http --expect respond:403
edgegate filter test --component target/wasm32-wasip2/release/{lib}.wasm \
    --request tests/allowed.http --expect continue
```

`edgegate filter test` runs the component in the same host as production
(same CPU deadline, memory cap and imports). Give it `--filter-config f.toml`
with a `[filter]` table (`config`, `timeout`, `memory`, `rate_limits`,
`key_sets`) and any `[rate_limits.*]` / `[key_sets.*]` it uses.

Attach it to a route:

```toml
[[routes.filters]]
path = "/etc/edgegate/filters/{lib}.wasm"
```

The SDK and the WIT contract (`edgegate:filter@0.2.0`) are vendored in
`vendor/`.
"#
            ),
        ),
        (
            "vendor/edgegate-filter-sdk/Cargo.toml".into(),
            r#"[package]
name = "edgegate-filter-sdk"
version = "0.1.0"
edition = "2021"
description = "Write edgegate filters (vendored copy)"

[dependencies]
wit-bindgen = { version = "0.57", default-features = false, features = ["macros", "realloc", "std", "bitflags"] }
"#
            .into(),
        ),
        ("vendor/edgegate-filter-sdk/src/lib.rs".into(), SDK_LIB.into()),
        (
            "vendor/edgegate-filter-sdk/src/arena.rs".into(),
            SDK_ARENA.into(),
        ),
        (
            "vendor/edgegate-filter-sdk/src/fields.rs".into(),
            SDK_FIELDS.into(),
        ),
        ("vendor/wit/filter.wit".into(), WIT.into()),
    ]
}

/// Creates `dir/name` with a buildable filter crate.
pub fn create(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(format!(
            "`{name}` is not a crate name (letters, digits, `-`, `_`)"
        ));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(format!("{} already exists", root.display()));
    }
    for (rel, content) in files(name) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(root)
}
