# Sourced by the dev scripts: one cargo target dir outside the checkout, so a
# fresh clone (and CI) reuses earlier builds when the machine has them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgegate/target}"
# shellcheck disable=SC1091
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
