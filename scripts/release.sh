#!/usr/bin/env bash
# Builds a release: dist/nexus-NAME-ARCH-linux.tar.gz (the binary, LICENSE, README,
# CHANGELOG, docs/ and deploy/) with its .sha256, and the container image nexus-rs:NAME
# where a Docker engine answers. NAME is the workspace version when HEAD carries the tag
# vVERSION, else VERSION-dev.COMMIT (plus -dirty for uncommitted changes).
#
#   scripts/release.sh [OUT_DIR]     (default: dist)
#   NEXUS_BIN=path scripts/release.sh   packs that binary instead of building one
#   NEXUS_RELEASE_IMAGE=0                builds no image (the tarball only)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
version=$(sed -n '/^\[workspace.package\]/,/^\[/{s/^version = "\(.*\)"/\1/p}' Cargo.toml)
[ -n "$version" ] || { echo "release.sh: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if git describe --exact-match --tags --match "v$version" HEAD >/dev/null 2>&1; then
  name="$version"
else
  name="$version-dev.$commit"
fi
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
  name="$name-dirty"
  echo "release.sh: the working tree has uncommitted changes: naming the build $name" >&2
fi
arch=$(uname -m)

bin="${NEXUS_BIN:-}"
if [ -z "$bin" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nexus-rs/target}"
  export ROCKSDB_LIB_DIR="${ROCKSDB_LIB_DIR:-/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)}"
  cargo build --release --bin nexus
  bin="$CARGO_TARGET_DIR/release/nexus"
fi

stage="nexus-$name-$arch-linux"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/$stage/bin"
install -m 755 "$bin" "$tmp/$stage/bin/nexus"
cp LICENSE README.md CHANGELOG.md "$tmp/$stage/"
cp -r docs deploy "$tmp/$stage/"
mkdir -p "$out"
tarball="$out/$stage.tar.gz"
tar -C "$tmp" -czf "$tarball" "$stage"
(cd "$out" && sha256sum "$stage.tar.gz" > "$stage.tar.gz.sha256")
echo "tarball: $tarball"

if [ "${NEXUS_RELEASE_IMAGE:-1}" = 0 ]; then
  echo "image: not built (NEXUS_RELEASE_IMAGE=0)"
elif docker info >/dev/null 2>&1; then
  docker build -f deploy/Dockerfile --build-arg "NEXUS_BUILD_COMMIT=$commit" \
    -t "nexus-rs:$name" .
  echo "image: nexus-rs:$name"
else
  echo "image: skipped (no Docker engine here); where one runs:" \
       "docker build -f deploy/Dockerfile --build-arg NEXUS_BUILD_COMMIT=$commit -t nexus-rs:$name ."
fi
