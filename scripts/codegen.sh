#!/usr/bin/env bash
# Regenerate the conductor-client package from openapi.json.
#
#   scripts/codegen.sh                  regenerate packages/conductor-client/src
#   scripts/codegen.sh --check          regenerate into a temporary folder; exit 1 on any
#                                       difference from what is committed
#   scripts/codegen.sh --refresh-spec   start the pinned server, store its /api-docs as
#                                       openapi.json (sorted, pretty-printed), then regenerate
#
# Inputs: openapi.json, codegen/ (config, pre-processing, template overrides). The generator
# is the PyPI package openapi-generator-cli pinned in requirements-dev.txt; it needs Java 11+.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

mode=generate
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    --refresh-spec) mode=refresh ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
esac

ensure_venv
java="$(find_java 11)" || exit 1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ "$mode" == refresh ]]; then
    export CONDUCTOR_SERVER_STATE_DIR="$work/server"
    url="$(scripts/conductor-server.sh start | tail -n 1)"
    trap 'scripts/conductor-server.sh stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
    root="${url%/api}"
    "$VENV_DIR/bin/python" - "$root" openapi.json <<'PY'
import json, sys, urllib.request
root, out = sys.argv[1], sys.argv[2]
spec = json.load(urllib.request.urlopen(root + "/api-docs", timeout=60))
version = urllib.request.urlopen(root + "/api/version", timeout=60).read().decode().strip()
spec["x-conductor-server-version"] = version  # which server served this document
with open(out, "w", encoding="utf-8") as f:
    f.write(json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
print(f"openapi.json refreshed from Conductor {version}", file=sys.stderr)
PY
    scripts/conductor-server.sh stop >/dev/null
fi

"$VENV_DIR/bin/python" codegen/preprocess.py openapi.json "$work/spec.json"
log "running openapi-generator"
JAVA_HOME="$(dirname "$(dirname "$java")")" PATH="$(dirname "$java"):$PATH" \
    "$VENV_DIR/bin/openapi-generator-cli" generate \
    --input-spec "$work/spec.json" \
    --config codegen/config.yaml \
    --template-dir codegen/templates \
    --output "$work/out" \
    --global-property apiTests=false,modelTests=false,apiDocs=false,modelDocs=false \
    >"$work/generator.log" 2>&1 || {
    cat "$work/generator.log" >&2
    die "openapi-generator failed"
}
gen="$work/out/src"
# The generator does not write py.typed when it generates source code only.
printf '' >"$gen/conductor_client/py.typed"

target=packages/conductor-client/src
if [[ "$mode" == check ]]; then
    if ! "$VENV_DIR/bin/python" codegen/sync.py check "$gen" "$target"; then
        die "the generated client differs from the committed one: run scripts/codegen.sh and commit"
    fi
    log "codegen check: the committed client matches a fresh generation"
else
    mkdir -p "$target"
    "$VENV_DIR/bin/python" codegen/sync.py install "$gen" "$target"
    log "regenerated $target/conductor_client"
fi
