#!/usr/bin/env bash
# Regenerates the Python gRPC/protobuf stubs of the mantle.v1 API from ../proto.
#
# Usage: scripts/generate.sh [OUTPUT_ROOT]
#   OUTPUT_ROOT defaults to sdk-python/src; the stubs land in OUTPUT_ROOT/mantle/v1/.
#   PYTHON selects the interpreter (default: sdk-python/.venv/bin/python), which must have
#   the pinned code generators installed: pip install -e '.[dev]'.
#
# The output is deterministic: the generator versions are pinned and checked, the proto
# files are passed in sorted order with repository-relative paths, and the stale stubs are
# removed first, so running it twice (or on another machine) yields identical bytes.
set -euo pipefail

GRPCIO_TOOLS_VERSION="1.85.1"
MYPY_PROTOBUF_VERSION="5.1.0"

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$SDK_DIR/.." && pwd)"
PROTO_ROOT="$REPO_DIR/proto"
OUT_ROOT="${1:-$SDK_DIR/src}"
PYTHON="${PYTHON:-$SDK_DIR/.venv/bin/python}"

if [ ! -x "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "generate.sh: python interpreter '$PYTHON' not found; create the venv first:" >&2
    echo "  python3 -m venv .venv && .venv/bin/pip install -e '.[dev,test]'" >&2
    exit 2
fi

"$PYTHON" - "$GRPCIO_TOOLS_VERSION" "$MYPY_PROTOBUF_VERSION" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

wanted = {"grpcio-tools": sys.argv[1], "mypy-protobuf": sys.argv[2]}
bad = []
for dist, pin in wanted.items():
    try:
        have = version(dist)
    except PackageNotFoundError:
        have = "not installed"
    if have != pin:
        bad.append(f"{dist}=={pin} required, found {have}")
if bad:
    sys.exit("generate.sh: " + "; ".join(bad) + " (pip install -e '.[dev]')")
PY

# protoc plugins from mypy-protobuf live next to the interpreter (venv bin dir).
BIN_DIR="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
for plugin in protoc-gen-mypy protoc-gen-mypy_grpc; do
    if [ ! -x "$BIN_DIR/$plugin" ]; then
        echo "generate.sh: $BIN_DIR/$plugin not found (pip install mypy-protobuf==$MYPY_PROTOBUF_VERSION)" >&2
        exit 2
    fi
done

OUT_DIR="$OUT_ROOT/mantle/v1"
mkdir -p "$OUT_DIR"
# Remove previous output so stubs of deleted .proto files do not linger.
find "$OUT_DIR" -maxdepth 1 -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' \
    -o -name '*_pb2_grpc.py' -o -name '*_pb2_grpc.pyi' \) -delete

cd "$PROTO_ROOT"
export LC_ALL=C
PROTOS=()
while IFS= read -r f; do PROTOS+=("$f"); done < <(find mantle/v1 -maxdepth 1 -name '*.proto' | sort)
if [ "${#PROTOS[@]}" -eq 0 ]; then
    echo "generate.sh: no .proto files under $PROTO_ROOT/mantle/v1" >&2
    exit 2
fi

"$PYTHON" -m grpc_tools.protoc \
    --proto_path=. \
    --plugin=protoc-gen-mypy="$BIN_DIR/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$BIN_DIR/protoc-gen-mypy_grpc" \
    --python_out="$OUT_ROOT" \
    --grpc_python_out="$OUT_ROOT" \
    --mypy_out=quiet:"$OUT_ROOT" \
    --mypy_grpc_out=quiet:"$OUT_ROOT" \
    "${PROTOS[@]}"

cat > "$OUT_DIR/__init__.py" <<'PY'
"""Generated protobuf and gRPC stubs of the mantle.v1 API.

Do not edit: regenerate with sdk-python/scripts/generate.sh.
"""
PY

# protoc does not create a package marker for the parent package in OUTPUT_ROOT; the SDK
# ships its own mantle/__init__.py, so nothing else to do here.
echo "generated ${#PROTOS[@]} proto file(s) into $OUT_DIR"
