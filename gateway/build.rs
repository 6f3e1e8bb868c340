//! Builds the first-party filter components (`../filters`, for
//! `wasm32-wasip2`) and embeds them, so a config can name `module = "headers"`
//! with nothing installed beside the binary.
//!
//! The guest workspace builds with its own cargo, into `<target>/wasm-guests`
//! (shared by every profile and by the integration tests), never into this
//! crate's target directory, so the two builds never contend for a lock.

// A build script reports failure by panicking; that is its interface.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// First-party filters embedded in the binary (module name, file stem).
const EMBEDDED: &[(&str, &str)] = &[
    ("headers", "headers"),
    ("rate-limit", "rate_limit"),
    ("api-key", "api_key"),
    ("jwt-auth", "jwt_auth"),
    ("noop", "noop"),
    ("image-transform", "image_transform"),
];

fn watch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                watch(&path);
            }
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let filters = manifest.join("../filters");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>/out (or <target>/<triple>/<profile>/...):
    // find <target> as the parent of the `build` directory's profile dir.
    let target_root = out
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent())
        .and_then(|profile| profile.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out.join("target"));
    let guest_target = target_root.join("wasm-guests");
    watch(&filters);

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        "wasm32-wasip2",
    ])
    .current_dir(&filters)
    .env("CARGO_TARGET_DIR", &guest_target);
    // Nothing of this build's configuration may leak into the guest build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR"
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
            || key == "RUSTC_WORKSPACE_WRAPPER"
            || key == "RUSTC"
            || key == "RUSTDOC"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", &guest_target);
    let status = cmd
        .status()
        .expect("cannot run cargo for the filter components");
    if !status.success() {
        panic!(
            "building the filter components failed (is the wasm32-wasip2 target installed? \
             `rustup target add wasm32-wasip2`)"
        );
    }
    let built = guest_target.join("wasm32-wasip2/release");
    let mut table = String::from("/// First-party filter components embedded at build time: (module, bytes).\npub const EMBEDDED: &[(&str, &[u8])] = &[\n");
    for (module, stem) in EMBEDDED {
        let src = built.join(format!("{stem}.wasm"));
        let dst = out.join(format!("{stem}.wasm"));
        std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        table.push_str(&format!(
            "    ({module:?}, include_bytes!({:?})),\n",
            dst.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out.join("embedded_filters.rs"), table)
        .expect("cannot write embedded_filters.rs");
}
