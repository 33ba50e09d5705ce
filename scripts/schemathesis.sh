#!/usr/bin/env bash
# Checks a running keygate against its own OpenAPI document with schemathesis.
#
#   KEYGATE_URL=http://127.0.0.1:8787 KEYGATE_ADMIN_TOKEN=... bash scripts/schemathesis.sh [extra st run args]
#
# - Installs schemathesis (pinned) into the project-local .venv/ once; later runs skip that.
# - Loads the schema from "$KEYGATE_URL/admin/openapi.json" and tests the admin API and /healthz
#   with the admin token. The `gateway` operations are excluded: they forward to an origin,
#   which may not exist, and their answers are the origin's.
# - Bounded: a few examples per operation, a time budget for the whole run (KEYGATE_ST_MAX_TIME,
#   default 120 s). It creates, changes and deletes keys: point it at a dev worker, never at
#   production.
# - Exits non-zero when any check fails (or the run errors).
#
# Env: KEYGATE_URL, KEYGATE_ADMIN_TOKEN (required); KEYGATE_ST_MAX_EXAMPLES (default 10),
# KEYGATE_ST_MAX_TIME (default 120), KEYGATE_ST_SEED (default: random), KEYGATE_ST_CHECKS
# (default below), KEYGATE_ST_PHASES (default examples,coverage,fuzzing,stateful),
# KEYGATE_ST_WORKERS (default 1). Extra arguments go to `st run` as they are.
# Failures are saved under .schemathesis/ (gitignored); `.venv/bin/st replay <id>` re-runs one.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SCHEMATHESIS_VERSION="4.32.*"
VENV="$ROOT/.venv"
ST="$VENV/bin/st"

log() { printf '[schemathesis] %s\n' "$*" >&2; }


installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true
}

want=${SCHEMATHESIS_VERSION%.\*}
have=$(installed_version)
if [ ! -x "$ST" ] || [[ "$have" != "$want".* ]]; then
  log "installing schemathesis==$SCHEMATHESIS_VERSION into .venv/"
  if [ ! -x "$VENV/bin/python" ]; then
    timeout 120 python3 -m venv "$VENV"
  fi
  timeout 300 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" >&2
  have=$(installed_version)
fi
log "schemathesis $have"
# `--install-only`: the test script installs up front, so the e2e run itself needs no network.
if [ "${1:-}" = "--install-only" ]; then exit 0; fi

: "${KEYGATE_URL:?set KEYGATE_URL to the worker's base URL, e.g. http://127.0.0.1:8787}"
: "${KEYGATE_ADMIN_TOKEN:?set KEYGATE_ADMIN_TOKEN to the worker's ADMIN_TOKEN}"
URL=${KEYGATE_URL%/}

# The worker must be up and serving its schema.
if ! timeout 10 curl -fsS -o /dev/null "$URL/healthz"; then
  log "no keygate at $URL (GET /healthz failed)"
  exit 2
fi

# Every check but positive_data_acceptance and object_level_authorization: schema-valid input
# is legitimately refused when it depends on state or secrets the schema cannot express (signed
# cursors, a past `expires_at`, a CIDR with host bits set, unknown ids), and there is one user.
CHECKS=${KEYGATE_ST_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,missing_required_header,unsupported_method,allow_header_conformance,use_after_free,ensure_resource_availability,ignored_auth}

# --url: test the worker the schema came from (the document has no `servers`).
# --generation-with-security-parameters=false: send only our Authorization header, never a
# generated X-API-Key beside it (two different credentials are, correctly, 401 ambiguous_key).
# --generation-database=none: no .hypothesis/ example database carried between runs.
# --workers 1 (KEYGATE_ST_WORKERS): a dev worker is one isolate anyway, and CPython 3.11.7's `ast`
# is not thread-safe ("AST constructor recursion depth mismatch" from hypothesis when two
# workers build strategies at once).
set +e
timeout $(( ${KEYGATE_ST_MAX_TIME:-120} + 60 )) "$ST" run "$URL/admin/openapi.json" \
  --url "$URL" \
  --header "Authorization: Bearer $KEYGATE_ADMIN_TOKEN" \
  --exclude-tag gateway \
  --checks "$CHECKS" \
  --phases "${KEYGATE_ST_PHASES:-examples,coverage,fuzzing,stateful}" \
  --max-examples "${KEYGATE_ST_MAX_EXAMPLES:-10}" \
  --max-time "${KEYGATE_ST_MAX_TIME:-120}" \
  --workers "${KEYGATE_ST_WORKERS:-1}" \
  --request-timeout 10 \
  --generation-with-security-parameters false \
  --generation-database none \
  --wait-for-schema 30 \
  --no-color \
  ${KEYGATE_ST_SEED:+--seed "$KEYGATE_ST_SEED"} \
  "$@"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  log "FAILED (exit $rc)"
else
  log "passed"
fi
exit "$rc"
