//! Config "UI" tests: every shipped example is valid, and every file under
//! `tests/invalid/` fails with exactly the message in its `.err` file — the
//! message `edgegate check` prints. `EDGEGATE_BLESS=1` rewrites the `.err`
//! files from the current output (review the diff before committing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn defaults() -> policies::Defaults {
    policies::Defaults {
        threads: 2,
        pop_name: "test".into(),
    }
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    // From the environment `cargo test` runs us in, not baked in at compile
    // time: a binary reused from a shared target dir may come from another
    // checkout.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let dir = manifest.join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

#[test]
fn every_example_is_valid() {
    let examples = files("examples", "toml");
    assert!(examples.len() >= 3, "examples are missing");
    for path in examples {
        if let Err(e) = policies::load_file(&path, &defaults()) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_invalid_config_fails_with_its_message() {
    let cases = files("tests/invalid", "toml");
    assert!(cases.len() >= 8);
    let bless = std::env::var_os("EDGEGATE_BLESS").is_some();
    let mut failures = Vec::new();
    for path in cases {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(&path).unwrap();
        let err = match policies::parse_str(&source, Path::new(&name), &defaults()) {
            Ok(_) => {
                failures.push(format!("{name}: accepted, expected an error"));
                continue;
            }
            Err(e) => e.to_string(),
        };
        let expected_path = path.with_extension("err");
        if bless {
            std::fs::write(&expected_path, format!("{err}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{name}: no .err file"));
        if err != expected.trim_end() {
            failures.push(format!(
                "{name}:\n  expected: {}\n  actual:   {err}",
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
