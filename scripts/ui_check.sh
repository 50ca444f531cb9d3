#!/usr/bin/env bash
# End-to-end UI check: start `dagster dev` on 127.0.0.1, launch `full_pipeline` through the GraphQL
# API, wait for it to succeed, screenshot the asset graph with headless Chromium, shut everything
# down and verify that no process is left behind.
#
# Everything runs on a temporary DAGSTER_HOME (with convrec_dagster/dagster.yaml) and a temporary
# CONVREC_HOME, so the check never touches your run history or database. The embedded sample dump
# is used unless UI_CHECK_RAW_DIR names a dump folder.
#
#   bash scripts/ui_check.sh            # or: make ui-check
#
# Environment: UI_CHECK_PORT (default: a free port), UI_CHECK_TIMEOUT (seconds for the run,
# default 1800), UI_CHECK_SCREENSHOT (default docs/asset_graph.png), UI_CHECK_RAW_DIR,
# UI_CHECK_KEEP=1 keeps the temporary folder (logs) for inspection, UI_CHECK_WINDOW (browser window,
# default 2400,2100: wide and tall enough that the graph's names are not truncated and no group is clipped).
# Chromium must be installed; the script installs Debian's package (apt-get, with sudo when not
# root) only when UI_CHECK_INSTALL_CHROMIUM=1 says so: `UI_CHECK_INSTALL_CHROMIUM=1 make ui-check`.
set -euo pipefail
set -m  # job control: `dagster dev` gets its own process group, stopped as a whole with SIGTERM

cd "$(dirname "$0")/.."
REPO=$PWD
BIN=${VENV:-$REPO/.venv}/bin
PY=$BIN/python
HOST=127.0.0.1
PORT=${UI_CHECK_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
URL=http://$HOST:$PORT
RUN_TIMEOUT=${UI_CHECK_TIMEOUT:-1800}
SCREENSHOT=${UI_CHECK_SCREENSHOT:-docs/asset_graph.png}
[[ $SCREENSHOT == /* ]] || SCREENSHOT=$REPO/$SCREENSHOT
WORK=$(mktemp -d -t convrec-ui-check.XXXXXX)
DAGSTER_HOME_DIR=$WORK/dagster_home
LOG=$WORK/dagster_dev.log
PROFILE=$WORK/chromium-profile
DEV_PID=

log() { printf '[ui_check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

# PIDs of processes started for this check: everything whose environment holds our DAGSTER_HOME
# (dagster dev, webserver, daemon, code server, run workers, step processes), our Chromium, and
# anything left in the process group of `dagster dev`. This script does not export DAGSTER_HOME
# itself, so it and its helpers never match.
leftover_pids() {
    {
        grep -lsxzF "DAGSTER_HOME=$DAGSTER_HOME_DIR" /proc/[0-9]*/environ 2>/dev/null \
            | cut -d/ -f3 || true
        pgrep -f -- "--user-data-dir=$PROFILE" || true
        if [[ -n $DEV_PID ]]; then pgrep -g "$DEV_PID" || true; fi
    } | sort -u | grep -vx "$$" || true
}

cleanup() {
    local rc=$? pids waited=0
    trap - EXIT
    if [[ -n $DEV_PID ]] && kill -0 "$DEV_PID" 2>/dev/null; then
        log "stopping dagster dev (SIGTERM to process group $DEV_PID)"
        kill -TERM -- "-$DEV_PID" 2>/dev/null || true
        while [[ -n $(leftover_pids) ]] && ((waited < 60)); do sleep 1; ((waited++)) || true; done
        wait "$DEV_PID" 2>/dev/null || true
    fi
    pids=$(leftover_pids)
    if [[ -n $pids ]]; then
        log "processes still running after 60 s: $(echo $pids) — sending SIGKILL"
        ps -o pid,pgid,etime,cmd -p $pids >&2 || true
        kill -KILL $pids 2>/dev/null || true
        rc=1
    else
        log "no process left behind"
    fi
    if ((rc != 0)); then
        log "last lines of $LOG:"
        tail -n 40 "$LOG" >&2 || true
    fi
    if [[ ${UI_CHECK_KEEP:-0} == 1 || $rc != 0 ]]; then
        log "kept $WORK for inspection"
    else
        rm -rf "$WORK"
    fi
    ((rc == 0)) && log "PASSED (screenshot: $SCREENSHOT)"
    exit "$rc"
}
# Chromium first: without it (and without the opt-in to install it) nothing is started.
# --- Chromium ------------------------------------------------------------------------------------
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $CHROMIUM ]]; then
    if [[ ${UI_CHECK_INSTALL_CHROMIUM:-0} != 1 ]]; then
        log "chromium is missing. Install it yourself (Debian/Ubuntu: sudo apt-get install chromium fonts-liberation),"
        log "or let this script run apt-get for you: UI_CHECK_INSTALL_CHROMIUM=1 make ui-check"
        rm -rf "$WORK"
        exit 2
    fi
    log "chromium is missing: installing Debian's chromium package with apt-get (UI_CHECK_INSTALL_CHROMIUM=1)"
    SUDO=; ((EUID == 0)) || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation
    CHROMIUM=$(command -v chromium) || fail "installing chromium did not put it on PATH"
fi

trap cleanup EXIT
trap 'exit 130' INT TERM

GQL=("$PY" "$REPO/scripts/ui_graphql.py")  # the GraphQL calls, in Python (stdlib only)

# --- dagster dev ---------------------------------------------------------------------------------
mkdir -p "$DAGSTER_HOME_DIR" "$WORK/convrec_home" "$(dirname "$SCREENSHOT")"
cp convrec_dagster/dagster.yaml "$DAGSTER_HOME_DIR/dagster.yaml"
log "starting dagster dev on $URL (DAGSTER_HOME=$DAGSTER_HOME_DIR, CONVREC_HOME=$WORK/convrec_home)"
env DAGSTER_HOME="$DAGSTER_HOME_DIR" CONVREC_HOME="$WORK/convrec_home" \
    CONVREC_RAW_DIR="${UI_CHECK_RAW_DIR:-}" PATH="$BIN:$PATH" \
    "$BIN/dagster" dev -h "$HOST" -p "$PORT" -w workspace.yaml >"$LOG" 2>&1 &
DEV_PID=$!

deadline=$((SECONDS + 240))
until curl -sf "$URL/server_info" >/dev/null; do
    kill -0 "$DEV_PID" 2>/dev/null || fail "dagster dev exited before serving $URL/server_info"
    ((SECONDS < deadline)) || fail "no answer from $URL/server_info after 240 s"
    sleep 2
done
log "webserver up: $(curl -sf "$URL/server_info")"

read -r LOCATION REPOSITORY < <("${GQL[@]}" location "$URL") || fail "the code location did not load"
log "code location $LOCATION, repository $REPOSITORY has full_pipeline"

# The first visit shows a "Join the Dagster community" modal until it is dismissed once.
"${GQL[@]}" dismiss-nux "$URL" >/dev/null || fail "could not dismiss the community modal"

# --- launch full_pipeline and wait ---------------------------------------------------------------
RUN_ID=$("${GQL[@]}" launch "$URL" "$LOCATION" "$REPOSITORY" full_pipeline) || fail "launchRun failed"
log "launched full_pipeline run $RUN_ID: $URL/runs/$RUN_ID"
"${GQL[@]}" wait-run "$URL" "$RUN_ID" "$RUN_TIMEOUT" >&2 || fail "full_pipeline run $RUN_ID did not succeed"

# --- screenshot of the global asset lineage ------------------------------------------------------
GRAPH_URL=$("${GQL[@]}" graph-url "$URL") || fail "could not list the asset groups"
log "screenshot of $GRAPH_URL -> $SCREENSHOT"
rm -f "$SCREENSHOT"
timeout 180 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage --hide-scrollbars --user-data-dir="$PROFILE" \
    --virtual-time-budget="${UI_CHECK_VIRTUAL_TIME_MS:-30000}" --window-size="${UI_CHECK_WINDOW:-2400,2100}" \
    --screenshot="$SCREENSHOT" "$GRAPH_URL" >"$WORK/chromium.log" 2>&1 \
    || { tail -n 20 "$WORK/chromium.log" >&2; fail "chromium failed"; }
[[ -s $SCREENSHOT ]] || fail "chromium wrote no screenshot"
log "wrote $SCREENSHOT ($(stat -c %s "$SCREENSHOT") bytes)"
