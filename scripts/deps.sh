#!/usr/bin/env bash
# Makes sure the system packages the build needs are present, installing them with apt when
# we can (root, or passwordless sudo); otherwise says exactly what to install.
set -euo pipefail

packages=(librocksdb-dev libclang-dev clang protobuf-compiler pkg-config)
# `--test`: the test suite also drives the web dashboard in a headless Chromium, validates
# deploy/docker-compose.yml with docker-compose (no engine needed for that), and runs the
# Node.js client example (nodejs, npm).
# Node.js may come from elsewhere (NodeSource's nodejs bundles npm): only what is missing.
if [ "${1:-}" = "--test" ]; then
  packages+=(chromium chromium-driver)
  command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
  command -v node >/dev/null 2>&1 || packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi
# Network namespaces for the chaos tests' isolation faults; only usable as root.
if [ "$(id -u)" -eq 0 ]; then packages+=(iproute2 iptables); fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs): curl -sSf https://sh.rustup.rs | sh" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing system packages: ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "missing system packages; install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
