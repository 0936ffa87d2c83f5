#!/usr/bin/env bash
# Fails (exit 1, printing the diff) if the committed stubs in src/mantle/v1 differ from
# what scripts/generate.sh produces from ../proto with the pinned generators.
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$SDK_DIR/scripts/generate.sh" "$TMP" >/dev/null

list_files() { (cd "$1" && find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort); }

# Compare the file sets (stale or missing stubs), then the contents (ignoring caches).
status=0
diff -u <(list_files "$SDK_DIR/src/mantle/v1") <(list_files "$TMP/mantle/v1") || status=1
diff -ruN -x '__pycache__' -x '*.pyc' "$SDK_DIR/src/mantle/v1" "$TMP/mantle/v1" || status=1
if [ "$status" -eq 0 ]; then
    echo "generated stubs are up to date"
else
    echo "check-generated.sh: src/mantle/v1 is out of date; run sdk-python/scripts/generate.sh" >&2
    exit 1
fi
