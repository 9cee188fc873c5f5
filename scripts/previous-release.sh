#!/usr/bin/env bash
# Prints the path of the previous release's `nexus` binary, building it the first time:
# the rolling-upgrade test (tests/upgrade.rs) runs it beside the current build.
#
# The previous release is the commit below, the build the last landed stop shipped; move
# it forward when a release lands (docs/operations.md, "Upgrades"). It is built from this
# clone's history (`git archive`) in a target dir of its own, once per machine, and kept
# under ~/.cache/nexus-rs/previous/<commit>/.
set -euo pipefail
PREVIOUS=f342ff2bf3a8ee9d6d619998ee61f72049119ee4

cd "$(dirname "$0")/.."
export ROCKSDB_LIB_DIR="${ROCKSDB_LIB_DIR:-/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)}"
out="${NEXUS_PREVIOUS_DIR:-$HOME/.cache/nexus-rs/previous}/$PREVIOUS"
bin="$out/nexus"
mkdir -p "$out"
# One build at a time, however many tests ask at once.
exec 9>"$out.lock"
flock 9
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
if ! git cat-file -e "$PREVIOUS^{commit}" 2>/dev/null; then
  # A shallow clone: ask its origin for that one commit.
  git fetch --quiet --depth=1 origin "$PREVIOUS" 2>/dev/null || true
fi
if ! git cat-file -e "$PREVIOUS^{commit}" 2>/dev/null; then
  echo "previous-release.sh: commit $PREVIOUS is not in this clone's history (a shallow" \
       "clone?): run \`git fetch --unshallow\`" >&2
  exit 1
fi
src="$out/src"
rm -rf "$src"
mkdir -p "$src"
git archive "$PREVIOUS" | tar -x -C "$src"
echo "previous-release.sh: building the previous release ($PREVIOUS) once, in $out" >&2
(cd "$src" && CARGO_TARGET_DIR="$out/target" cargo build --locked --bin nexus >&2)
cp "$out/target/debug/nexus" "$bin.tmp"
mv "$bin.tmp" "$bin"
# The binary is all that is kept (its build tree is a few GB).
rm -rf "$src" "$out/target"
echo "$bin"
