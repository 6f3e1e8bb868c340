#!/usr/bin/env bash
# README quick start #2: set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/setup.sh
. packaging/dev/env.sh
cargo test --locked --workspace --all-targets "$@"
