#!/usr/bin/env bash
# The project's test command:  bash tests/run.sh [pytest args...]
#
# Installs the package with its test extras, starts a real PostgreSQL (cluster 15 main) and a
# real Kafka broker (jars from Maven Central), runs pytest against them, and always stops what
# it started. A missing service is a test failure here (LLM_GATEWAY_TEST_SERVICES=required).
# Exits with pytest's code, except "no tests collected" (5), which is a failure (1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python}
# PostgreSQL (cluster 15 main) is machine-wide and tests take services down on purpose:
# concurrent runs on one machine wait for each other instead of breaking each other.
LOCK=${LLM_GATEWAY_TEST_LOCK:-/tmp/llm-gateway-tests.lock}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
kafka_started=0
postgres_started=0

say() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# report LABEL START: print the time since START (an $EPOCHREALTIME value).
report() {
  say "$(awk -v l="$1" -v a="$2" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-24s %6.1fs", l, b - a }')"
}

# timed LABEL CMD...: run CMD, report its duration, return its exit code.
timed() {
  local label=$1 start=$EPOCHREALTIME rc=0
  shift
  "$@" || rc=$?
  report "$label" "$start"
  return "$rc"
}

# py ARGS...: run Python without the lock's file descriptor.
py() { "$PYTHON" "$@" 9>&-; }

exec 9>>"$LOCK"
if ! flock -n 9; then
  say "another tests/run.sh holds $LOCK: waiting for it"
  flock 9
fi

cleanup() {
  local rc=$?
  if ((kafka_started)); then
    timed "kafka stop" py -m tests.services.kafka stop || say "WARNING: kafka stop failed"
  fi
  if ((postgres_started)); then
    timed "postgres stop" py -m tests.services.postgres stop || say "WARNING: postgres stop failed"
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

timed "pip install -e .[test]" py -m pip install -q -e '.[test]'
timed "kafka jars" py -m tests.services.kafka fetch

postgres_started=1
start=$EPOCHREALTIME
database_url=$(py -m tests.services.postgres start | tail -n 1)
report "postgres start" "$start"

kafka_started=1
start=$EPOCHREALTIME
kafka_bootstrap=$(py -m tests.services.kafka start | tail -n 1)
report "kafka start" "$start"

export LLM_GATEWAY_TEST_KAFKA=$kafka_bootstrap
export LLM_GATEWAY_TEST_DATABASE_URL=$database_url
export LLM_GATEWAY_TEST_SERVICES=required
say "LLM_GATEWAY_TEST_KAFKA=$LLM_GATEWAY_TEST_KAFKA"
say "LLM_GATEWAY_TEST_DATABASE_URL=$LLM_GATEWAY_TEST_DATABASE_URL"

status=0
timed "pytest" py -m pytest "$@" || status=$?
if ((status == 5)); then
  say "pytest collected no tests: failing"
  status=1
fi
exit "$status"
