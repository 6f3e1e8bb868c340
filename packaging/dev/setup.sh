#!/usr/bin/env bash
# Installs what building and testing edgegate needs on Debian 12 with rustup.
# Idempotent: installs only what is missing. Used by the README's commands
# and by CI.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)        # pingora's zlib-ng build
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential) # ring, zstd, zlib-ng
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)

if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # A private archive dir: some images delete downloaded .debs after each
  # dpkg pass, which can break a multi-package install halfway.
  archives="${TMPDIR:-/tmp}/edgegate-apt-archives"
  mkdir -p "$archives/partial"
  echo "setup: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    -o Dir::Cache::archives="$archives/" "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  # shellcheck disable=SC1091
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: Rust is missing; install it with rustup (https://rustup.rs)" >&2; exit 1; }

if command -v rustup >/dev/null 2>&1; then
  installed_components=$(rustup component list --installed 2>/dev/null || true)
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$installed_components" || rustup component add "$c" >&2
  done
  # Filters are WebAssembly components built for wasm32-wasip2.
  rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2 >&2
fi
