#!/usr/bin/env bash
# README quick start #1: set up, then run edgegate in front of its built-in
# demo origin. Ctrl-C stops it. Extra arguments go to `edgegate demo`.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/setup.sh
. packaging/dev/env.sh
exec cargo run --locked -p edgegate -- demo "$@"
