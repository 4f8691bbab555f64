# Shared helpers for the tray scripts (smoke.sh, idle-rss.sh). Source it; it defines
# functions only. Callers set TMP (a scratch dir) and SCRIPT_NAME before using them.
# Only Debian packages that `cargo xtask test` installs are used (no curl, jq, python:
# HTTP goes through Node, which the UI tests need anyway).

PIDS=()

log() { printf '%s: %s\n' "${SCRIPT_NAME:-tray}" "$*" >&2; }

fail() {
    log "FAIL: $*"
    local f
    for f in "$TMP"/tray*.log "$TMP"/hub.err; do
        [[ -s "$f" ]] && { log "--- last lines of $(basename "$f")"; tail -n 25 "$f" >&2; }
    done
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.25 s.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${seconds}s waiting for $what"
        sleep 0.25
    done
}

alive() { kill -0 "$1" 2>/dev/null; }

# Stops every process in PIDS, newest first (the app before the hub, the X server last).
stop_all() {
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

# Starts Xvfb on a free display (it picks and reports it with -displayfd); exports DISPLAY.
# -noreset: otherwise the server resets when its last client leaves (often one of our
# xwininfo polls) and refuses whoever connects during the reset.
start_xvfb() {
    local dfd
    exec {dfd}>"$TMP/display"
    Xvfb -displayfd "$dfd" -screen 0 1280x800x24 -nolisten tcp -noreset >"$TMP/xvfb.log" 2>&1 &
    PIDS+=($!)
    exec {dfd}>&-
    wait_for 15 "Xvfb to start" test -s "$TMP/display"
    export DISPLAY=":$(head -n1 "$TMP/display")"
    wait_for 15 "the X server to answer" xwininfo -root
    # Services the session bus starts on demand (portals, a11y) need the display too.
    dbus-update-activation-environment DISPLAY XDG_RUNTIME_DIR >/dev/null 2>&1 || true
}

# Starts the hub on a free loopback port; sets HUB_URL, HUB_HOSTPORT, DB_URL.
start_hub() {
    DB_URL="sqlite://$TMP/hub.db"
    "$HUB_BIN" --database-url "$DB_URL" serve --listen 127.0.0.1:0 >"$TMP/hub.log" 2>"$TMP/hub.err" &
    PIDS+=($!)
    wait_for "${SMOKE_TIMEOUT:-30}" "the hub to listen" grep -q 'edge-hub listening on http://' "$TMP/hub.log"
    HUB_URL=$(sed -n 's/.*edge-hub listening on \(http:\/\/[^ ]*\).*/\1/p' "$TMP/hub.log" | head -n1)
    HUB_HOSTPORT=${HUB_URL#http://}
}

hub_cli() { "$HUB_BIN" --database-url "$DB_URL" "$@" 2>>"$TMP/hub.err"; }

# api METHOD URL [JSON]: prints the answer body; fails on a non-2xx status. Uses
# API_KEY as the bearer token when set.
api() {
    node -e '
        const [method, url, body] = process.argv.slice(1);
        const headers = { "content-type": "application/json" };
        if (process.env.API_KEY) headers.authorization = `Bearer ${process.env.API_KEY}`;
        fetch(url, { method, headers, body: body || undefined })
            .then(async (r) => {
                const text = await r.text();
                process.stdout.write(text);
                if (!r.ok) { console.error(`${method} ${url}: HTTP ${r.status}`); process.exit(1); }
            })
            .catch((e) => { console.error(`${method} ${url}: ${e.message}`); process.exit(1); });
    ' "$@"
}

# Logs the agent in with the CLI (as a person would before starting the tray) into the
# keychain named by EDGE_AGENT_KEYCHAIN; sets API_KEY for later job submissions.
login_with_cli() {
    local token
    token=$(hub_cli enroll-token create --creator c1) || fail "enroll-token create failed"
    API_KEY=$(hub_cli api-key create --name "${SCRIPT_NAME:-tray}") || fail "api-key create failed"
    [[ -n "$token" && -n "$API_KEY" ]] || fail "the hub printed an empty token or key"
    export API_KEY
    "$AGENT_BIN" --keychain "$EDGE_AGENT_KEYCHAIN" login --hub "$HUB_URL" --token "$token" \
        >"$TMP/agent-login.log" 2>&1 || fail "edge-agent login failed: $(tail -n 5 "$TMP/agent-login.log")"
}

# WebKitGTK on a bare X server: no GPU, no DMA-BUF.
webkit_software_rendering() {
    export WEBKIT_DISABLE_COMPOSITING_MODE=1 WEBKIT_DISABLE_DMABUF_RENDERER=1 LIBGL_ALWAYS_SOFTWARE=1
}

start_trayer() {
    trayer --edge top --align right --widthtype pixel --width 160 --height 32 \
        --SetDockType true --transparent false --tint 0x303030 >"$TMP/trayer.log" 2>&1 &
    PIDS+=($!)
    trayer_up() { xwininfo -root -tree | grep -q '("panel" "trayer")'; }
    wait_for 15 "trayer's panel" trayer_up
}
