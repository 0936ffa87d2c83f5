#!/usr/bin/env bash
# Runs the AI examples (examples/ai-*.yaml) against the fake model server of the tests, with
# no provider account: builds the binaries, starts the fake (scripted by fake-script.json)
# and a daemon in a temporary directory, stores the secrets `openai` and `anthropic` (their
# base_url points at the fake), names `anthropic` as the tenant's default credential, and
# runs each example, printing its execution and logs. Usage: examples/ai/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build -q -p mantle-daemon --bin mantle -p mantle-client --bin mantlectl \
    -p mantle-integration --bin fake-llm
bin=$CARGO_TARGET_DIR/debug
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/fake-llm" --script examples/ai/fake-script.json >"$work/fake.out" 2>"$work/fake.log" &
for _ in $(seq 100); do grep -q listening "$work/fake.out" 2>/dev/null && break; sleep 0.1; done
fake=$(sed -n 's/^fake-llm listening on //p' "$work/fake.out")
echo "fake model server: $fake"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export MANTLE_ADDRESS=127.0.0.1:$port MANTLE_TOKEN=examples-token-0123456789abcdef
MANTLE_API_ADDRESS=$MANTLE_ADDRESS MANTLE_API_TOKEN=$MANTLE_TOKEN MANTLE_DATA_DIR=$work/data \
    MANTLE_AI_ALLOWED_BASE_URLS="$fake/v1,$fake" MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS=true \
    "$bin/mantle" serve >"$work/mantle.log" 2>&1 &
for _ in $(seq 100); do "$bin/mantlectl" health >/dev/null 2>&1 && break; sleep 0.1; done

"$bin/mantlectl" secrets create openai --type openai \
    --field api_key=sk-fake --field "base_url=$fake/v1" >/dev/null
"$bin/mantlectl" secrets create anthropic --type anthropic \
    --field api_key=sk-ant-fake --field "base_url=$fake" >/dev/null
"$bin/mantlectl" tenants update default --default-credential anthropic=anthropic >/dev/null

run() {
    echo
    echo "== $1"
    "$bin/mantlectl" run "$@" --wait -o json
}
run examples/ai-summarize.yaml --input "url=$fake/echo/page"
run examples/ai-extract.yaml --input "text=Ada Lovelace (36) writes from ada@example.com"
run examples/ai-agent.yaml --input "question=What is the weather in Paris?" \
    --input "weather_api=$fake/echo/weather"
echo
echo "== the agent's log"
id=$("$bin/mantlectl" executions list --workflow ai-agent -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
"$bin/mantlectl" logs "$id"
