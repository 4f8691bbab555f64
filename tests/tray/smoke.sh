#!/usr/bin/env bash
# Tray app smoke test: the real tray binary on a throw-away X desktop (Xvfb), with its own
# D-Bus session, Secret Service (gnome-keyring), notification server (dunst) and XEmbed
# tray host (trayer), against a real hub.
#
# Called by `cargo xtask test` with:
#   HUB_BIN    edge-hub binary
#   AGENT_BIN  edge-agent CLI binary (used to log in, as a person would before the tray)
#   TRAY_BIN   edge-agent-tray binary
#   OUT_DIR    where screenshots and logs go (created)
# Optional: SMOKE_TIMEOUT (seconds per wait, default 30), KEEP_TMP=1 (keep the temp dir).
#
# Needs (Debian): xvfb x11-utils imagemagick dbus gnome-keyring dunst trayer nodejs xdotool
# xclip.
# Exits non-zero with a "tray smoke: FAIL:" line on the first failed check.
set -euo pipefail

log() { printf 'tray smoke: %s\n' "$*" >&2; }

# --- stage 1: re-run inside a private D-Bus session bus --------------------------------
# dbus-run-session ends the bus (and gnome-keyring with it) when this script ends.
if [[ -z "${EDGE_SMOKE_IN_SESSION:-}" ]]; then
    : "${HUB_BIN:?set HUB_BIN to the edge-hub binary}"
    : "${AGENT_BIN:?set AGENT_BIN to the edge-agent binary}"
    : "${TRAY_BIN:?set TRAY_BIN to the edge-agent-tray binary}"
    : "${OUT_DIR:?set OUT_DIR to a directory for screenshots and logs}"
    for tool in Xvfb dbus-run-session dbus-monitor gnome-keyring-daemon dunst trayer xwininfo import node xdotool xclip; do
        command -v "$tool" >/dev/null || { log "FAIL: $tool is not installed"; exit 1; }
    done
    for bin in "$HUB_BIN" "$AGENT_BIN" "$TRAY_BIN"; do
        [[ -x "$bin" ]] || { log "FAIL: $bin is not an executable"; exit 1; }
    done
    mkdir -p "$OUT_DIR"
    # The bus gets a clean environment: no session of the caller may leak in.
    export EDGE_SMOKE_IN_SESSION=1
    HOME_TMP=$(mktemp -d "${TMPDIR:-/tmp}/edge-tray-smoke.XXXXXX")
    export EDGE_SMOKE_TMP=$HOME_TMP
    mkdir -p "$HOME_TMP/home" "$HOME_TMP/run"
    chmod 700 "$HOME_TMP/run"
    export HOME="$HOME_TMP/home" XDG_RUNTIME_DIR="$HOME_TMP/run"
    # The checks read the English words; the app follows the system language.
    export LC_ALL=C.UTF-8 LANG=C.UTF-8
    unset LC_MESSAGES LANGUAGE
    export XDG_CONFIG_HOME="$HOME/.config" XDG_DATA_HOME="$HOME/.local/share" XDG_CACHE_HOME="$HOME/.cache"
    unset DBUS_SESSION_BUS_ADDRESS DISPLAY WAYLAND_DISPLAY
    status=0
    # The bus daemon and the services it activates write to dbus-run-session's stdout and
    # stderr; both go to a log, and the test's own stderr/stdout are handed over on fd 3/4.
    dbus-run-session -- bash "$0" "$@" 3>&2 4>&1 2>"$HOME_TMP/session-bus.log" >&2 || status=$?
    if [[ -z "${KEEP_TMP:-}" ]]; then rm -rf "$HOME_TMP"; else log "kept $HOME_TMP"; fi
    exit "$status"
fi

# --- stage 2: the test, inside the session ---------------------------------------------
exec 2>&3 1>&4 3>&- 4>&-
TMP=$EDGE_SMOKE_TMP
SCRIPT_NAME="tray smoke"
TIMEOUT=${SMOKE_TIMEOUT:-30}
OUT_DIR=$(cd "$OUT_DIR" && pwd)
# shellcheck source=tests/tray/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cleanup() {
    stop_all
    # Logs are what one reads after a failure.
    cp -f "$TMP"/*.log "$OUT_DIR"/ 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- X server ---------------------------------------------------------------------------
start_xvfb
log "X server on $DISPLAY, session bus $DBUS_SESSION_BUS_ADDRESS"

# --- Secret Service, notification server ----------------------------------------------
# A password on stdin makes gnome-keyring create and unlock the "login" keyring (the
# default collection) without a prompt; an empty one creates nothing.
printf 'edge-smoke' | gnome-keyring-daemon --foreground --unlock --components=secrets >"$TMP/keyring.log" 2>&1 &
PIDS+=($!)
wait_for 15 "gnome-keyring on the bus" \
    dbus-send --session --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetNameOwner string:org.freedesktop.secrets

dunst >"$TMP/dunst.log" 2>&1 &
PIDS+=($!)
wait_for 15 "dunst on the bus" \
    dbus-send --session --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetNameOwner string:org.freedesktop.Notifications

# --- hub, and a login with the CLI into the Secret Service -----------------------------
start_hub
log "hub at $HUB_URL"
export EDGE_AGENT_KEYCHAIN=secret-service
export EDGE_AGENT_DATA_DIR="$TMP/agent-data"
export EDGE_AGENT_HB_INTERVAL_SECS=5
login_with_cli
log "logged in with the CLI"
# A fresh install runs nothing: the person grants the one capability this script's job uses.
"$AGENT_BIN" consent grant http_request >"$TMP/agent-consent.log" 2>&1 ||
    fail "edge-agent consent grant failed: $(tail -n 5 "$TMP/agent-consent.log")"
# The job below asks the local hub's own page, which the egress gate refuses (loopback) until
# the person allows that one address: the tray reads the list from settings.json, where a
# person keeps it (the CLI's `--allow-egress` is the same list for one run).
python3 - "$EDGE_AGENT_DATA_DIR/settings.json" "$HUB_HOSTPORT" <<'PY' || fail "could not allow $HUB_HOSTPORT in settings.json"
import json, sys
path, allowed = sys.argv[1], sys.argv[2]
with open(path) as f:
    settings = json.load(f)
settings.setdefault("allowEgress", []).append(allowed)
with open(path, "w") as f:  # rewritten in place: the file keeps its 0600 mode
    json.dump(settings, f, indent=2)
PY

webkit_software_rendering
export EDGE_AGENT_SHOW_WINDOW=1 EDGE_AGENT_LOG=${EDGE_AGENT_LOG:-info}

window_id() {
    # The top-level window titled "Edge Agent" (WebKit adds unnamed children).
    xwininfo -root -tree | awk '/"Edge Agent"/ {print $1; exit}'
}
window_mapped() {
    local id
    id=$(window_id)
    [[ -n "$id" ]] && xwininfo -id "$id" | grep -q 'Map State: IsViewable'
}

stop_tray() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

# --- phase 1: no tray host -----------------------------------------------------------------
# Before trayer runs there is no system tray at all: the app must still start, stay up
# and show its window.
"$TRAY_BIN" >"$TMP/tray-notray.log" 2>&1 &
TRAY_PID=$!
PIDS+=($TRAY_PID)
wait_for "$TIMEOUT" "the window (no tray host)" window_mapped
sleep 4
alive "$TRAY_PID" || fail "the tray app died without a tray host"
no_panic() { ! grep -q 'panicked' "$1" || fail "$(basename "$1") shows a panic"; }
no_panic "$TMP/tray-notray.log"
import -window root "$OUT_DIR/tray-no-tray-host.png" || fail "screenshot failed"
stop_tray "$TRAY_PID"
log "ok: runs without a tray host"

# --- phase 2: with an XEmbed tray host ------------------------------------------------------
start_trayer

dbus-monitor --session "interface='org.freedesktop.Notifications'" >"$TMP/dbus-monitor.log" 2>&1 &
PIDS+=($!)
sleep 1

"$TRAY_BIN" >"$TMP/tray.log" 2>&1 &
TRAY_PID=$!
PIDS+=($TRAY_PID)
wait_for "$TIMEOUT" "the window" window_mapped
WIN_ID=$(window_id)
log "window $WIN_ID is mapped"

# The hub sees the embedded agent online (the tray started it from the keychain).
agents_online() { api GET "$HUB_URL/v1/agents" | grep -q '"online":true'; }
wait_for "$TIMEOUT" "the agent to be online at the hub" agents_online
log "ok: agent online"

# The tray icon (appindicator falls back to an XEmbed status icon when no StatusNotifier
# host runs) is a window named after the binary, reparented into trayer's panel.
tray_icon_docked() {
    local panel
    panel=$(xwininfo -root -tree | awk '/\("panel" "trayer"\)/ {print $1; exit}')
    [[ -n "$panel" ]] || return 1
    xwininfo -id "$panel" -tree | grep -q "\"$(basename "$TRAY_BIN")\""
}
wait_for "$TIMEOUT" "the tray icon to dock in trayer" tray_icon_docked
xwininfo -root -tree >"$TMP/x-tree.log"
log "ok: tray icon docked"

# A second launch must hand over to the running instance and exit.
timeout 20 "$TRAY_BIN" >"$TMP/tray-second.log" 2>&1 || fail "second launch did not exit cleanly (status $?)"
alive "$TRAY_PID" || fail "the first instance died when a second one started"
log "ok: single instance"

# --- a job: notifications ------------------------------------------------------------------
JOB=$(api POST "$HUB_URL/v1/jobs" \
    "{\"type\":\"http_request\",\"creatorId\":\"c1\",\"payload\":{\"url\":\"http://$HUB_HOSTPORT/health\"}}") ||
    fail "POST /v1/jobs failed"
JOB_ID=$(printf '%s' "$JOB" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[[ -n "$JOB_ID" ]] || fail "no job id in $JOB"
log "job $JOB_ID submitted"

job_succeeded() { api GET "$HUB_URL/v1/jobs/$JOB_ID" | grep -q '"status":"succeeded"'; }
wait_for "$TIMEOUT" "job $JOB_ID to succeed" job_succeeded
notified() { grep -q 'member=Notify' "$TMP/dbus-monitor.log" && grep -q 'Task finished' "$TMP/dbus-monitor.log"; }
wait_for "$TIMEOUT" "a 'Task finished' Notify call on D-Bus" notified
grep -q 'Task started' "$TMP/dbus-monitor.log" || fail "no 'Task started' notification"
log "ok: notifications sent over org.freedesktop.Notifications"
# A click on the job's notification (dunst performs its "default" action) opens the window
# on that job.
dunstctl action 0 || fail "dunstctl could not click the notification"
clicked() { grep -q "notification clicked: showing its task.*$JOB_ID" "$TMP/tray.log"; }
wait_for "$TIMEOUT" "the click on the notification to reach the tray" clicked
log "ok: clicking the job's notification opens the window on it"

# Let the window catch up with the job row, then take the pictures.
sleep 2
import -window root "$OUT_DIR/tray-window.png" || fail "screenshot failed"
import -window "$WIN_ID" "$OUT_DIR/tray-window-only.png" 2>/dev/null || true
alive "$TRAY_PID" || fail "the tray app died during the test"
no_panic "$TMP/tray.log"

# --- quit ------------------------------------------------------------------------------------
# SIGTERM takes the same path as the tray's Quit item: stop the core, exit 0.
kill -TERM "$TRAY_PID"
for _ in $(seq 100); do alive "$TRAY_PID" || break; sleep 0.1; done
alive "$TRAY_PID" && fail "the tray app did not quit within 10 s of SIGTERM"
quit_status=0
wait "$TRAY_PID" || quit_status=$?
((quit_status == 0)) || fail "the tray app exited with status $quit_status on SIGTERM"
grep -q '"running": *false' "$EDGE_AGENT_DATA_DIR/state.json" || fail "state.json does not say the agent stopped"
log "ok: clean quit"

# --- log in through the window ----------------------------------------------------------------
# A profile with no stored login: the window opens on its login form. The test does what a
# person does: focus the window, type the hub URL and an enrollment token into the form,
# press "Log in". xdotool sends real X key events (XTEST), which reach WebKitGTK like a
# keyboard's; the window's text is read back the same way a person would copy it (select
# all, copy, read the clipboard).
WINDOW_CREATOR=c-window
WINDOW_TOKEN=$(hub_cli enroll-token create --creator "$WINDOW_CREATOR") || fail "enroll-token create failed"
export EDGE_AGENT_PROFILE=window-login EDGE_AGENT_DATA_DIR="$TMP/agent-window-login"
"$TRAY_BIN" >"$TMP/tray-window-login.log" 2>&1 &
TRAY_PID=$!
PIDS+=($TRAY_PID)
wait_for "$TIMEOUT" "the login window" window_mapped
WIN_ID=$(window_id)

# A click on the window's heading puts the focus on the page itself, out of any field.
click_heading() { xdotool mousemove --window "$WIN_ID" 30 26 click 1; }
# The page's visible text, as select-all + copy puts it on the clipboard.
window_text() {
    xdotool windowfocus "$WIN_ID" || return 1
    click_heading
    xdotool key --clearmodifiers ctrl+a ctrl+c
    sleep 0.2
    timeout 5 xclip -selection clipboard -o
}
window_says() {
    local text
    text=$(window_text 2>/dev/null) || return 1
    printf '%s' "$text" >"$TMP/window-text.log"
    grep -qF "$1" <<<"$text"
}
# Fills the form and sends it: from the page, Tab to the hub URL field and replace its
# text, Tab to the token field and replace it, Tab to the "Log in" button and press it.
log_in_through_window() {
    xdotool windowfocus "$WIN_ID"
    click_heading
    xdotool key --clearmodifiers Tab ctrl+a
    xdotool type --delay 15 "$1"
    xdotool key --clearmodifiers Tab ctrl+a
    xdotool type --delay 15 "$2"
    xdotool key --clearmodifiers Tab Return
}
wait_for "$TIMEOUT" "the window's login form ('Connect this machine')" window_says "Connect this machine"
window_says "Get a sign-in code" || fail "the window does not offer sign-in by code: $(cat "$TMP/window-text.log")"
import -window root "$OUT_DIR/tray-login-form.png" || fail "screenshot failed"
# Sign-in by code is the default; the token form is behind "Use an enrollment token
# instead": Tab to the hub URL field, past "Get a sign-in code", to the link, and press it.
xdotool windowfocus "$WIN_ID"
click_heading
xdotool key --clearmodifiers Tab Tab Tab Return
wait_for "$TIMEOUT" "the token form ('Sign in with a code instead')" window_says "Sign in with a code instead"

# A token the hub never issued: the window says so, and nothing is enrolled.
log_in_through_window "$HUB_URL" "et_0123456789abcdef0123456789abcdef"
wait_for "$TIMEOUT" "the window to refuse an unknown token" window_says "The enrollment token is unknown"
api GET "$HUB_URL/v1/agents" | grep -q "\"creatorId\":\"$WINDOW_CREATOR\"" && fail "an unknown token enrolled an agent"
log "ok: the window refuses an unknown token"

log_in_through_window "$HUB_URL" "$WINDOW_TOKEN"
log "typed the hub URL and the token into the window and pressed Log in"

# The hub: an agent of that creator enrolled and online.
window_agent_online_for() {
    api GET "$HUB_URL/v1/agents" | node -e '
        let body = ""; process.stdin.on("data", (d) => (body += d)).on("end", () => {
            const agent = JSON.parse(body).agents.find((a) => a.creatorId === process.argv[1] && a.online);
            if (!agent) process.exit(1);
            process.stdout.write(agent.agentId);
        });' "$1"
}
window_agent_online() { window_agent_online_for "$WINDOW_CREATOR"; }
wait_for "$TIMEOUT" "an agent of $WINDOW_CREATOR online at the hub (logged in through the window)" window_agent_online
WINDOW_AGENT=$(window_agent_online)
log "ok: agent $WINDOW_AGENT of $WINDOW_CREATOR is online"
# Nothing is granted on this fresh profile: the window asks first, every box unticked.
wait_for "$TIMEOUT" "the consent screen ('Choose what this computer may do')" window_says "Choose what this computer may do"
window_says "Send web requests from your connection" || fail "the consent screen lists no web requests: $(cat "$TMP/window-text.log")"
import -window root "$OUT_DIR/tray-consent.png" || fail "screenshot failed"
granted_in_window_profile() {
    python3 - "$EDGE_AGENT_DATA_DIR/settings.json" "$1" <<'PY'
import json, sys
try:
    with open(sys.argv[1]) as f:
        grants = json.load(f).get("grants", {})
except FileNotFoundError:
    grants = {}
sys.exit(0 if sys.argv[2] in grants else 1)
PY
}
granted_in_window_profile http_request && fail "http_request was granted before anyone ticked it"
# The first box is "Send web requests from your connection": Tab to it, tick it with Space.
xdotool windowfocus "$WIN_ID"
click_heading
xdotool key --clearmodifiers Tab space
wait_for "$TIMEOUT" "the tick to grant http_request in settings.json" granted_in_window_profile http_request
granted_in_window_profile bundle && fail "ticking one box granted bundle too"
# The hub learns it at once (the agent reconnects to announce it, no job being run): a web
# request job for this creator is assigned to the agent, not left waiting. The agent's egress
# gate then refuses the hub's own loopback address, which this profile never allowed, so the
# job ends failed; assigned is what counts here.
WJOB=$(api POST "$HUB_URL/v1/jobs" \
    "{\"type\":\"http_request\",\"creatorId\":\"$WINDOW_CREATOR\",\"payload\":{\"url\":\"http://$HUB_HOSTPORT/health\"}}") ||
    fail "POST /v1/jobs failed"
WJOB_ID=$(printf '%s' "$WJOB" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[[ -n "$WJOB_ID" ]] || fail "no job id in $WJOB"
wjob_assigned() { api GET "$HUB_URL/v1/jobs/$WJOB_ID" >"$TMP/window-job.log" && ! grep -q '"status":"pending"' "$TMP/window-job.log"; }
wait_for "$TIMEOUT" "job $WJOB_ID to be assigned to the agent that was just granted http_request" wjob_assigned
grep -q "capability_not_granted\|CAPABILITY_NOT_GRANTED" "$TMP/window-job.log" &&
    fail "the agent refused the job as not granted: $(cat "$TMP/window-job.log")"
log "ok: ticking the box in the window granted http_request, and nothing else; the hub assigns it at once"
# "Done" is the screen's last control: from the page, Tab through the three boxes and
# their "What exactly is recorded" disclosures, the site field and its Add button.
xdotool windowfocus "$WIN_ID"
click_heading
xdotool key --clearmodifiers Tab Tab Tab Tab Tab Tab Tab Tab Tab Return
# The window: the status view, with the agent id and the connection.
wait_for "$TIMEOUT" "the window to show agent $WINDOW_AGENT" window_says "$WINDOW_AGENT"
window_says "Online" || fail "the window does not say Online: $(cat "$TMP/window-text.log")"
window_says "Connect this machine" && fail "the window still shows the login form: $(cat "$TMP/window-text.log")"
import -window root "$OUT_DIR/tray-logged-in-through-window.png" || fail "screenshot failed"
# The keychain: the login is stored in the Secret Service under that profile.
"$AGENT_BIN" --keychain "$EDGE_AGENT_KEYCHAIN" status >"$TMP/agent-window-status.log" 2>&1 ||
    fail "edge-agent status failed: $(cat "$TMP/agent-window-status.log")"
grep -qF "$WINDOW_AGENT" "$TMP/agent-window-status.log" ||
    fail "the keychain holds no login for $WINDOW_AGENT: $(cat "$TMP/agent-window-status.log")"
no_panic "$TMP/tray-window-login.log"
stop_tray "$TRAY_PID"
log "ok: logged in through the window"
# --- sign in by code through the window ------------------------------------------------------
# Another fresh profile, the default way: type the hub URL, press Enter, read the code off the
# window as a person would, and approve it through the hub's device API (what the hub's page
# calls) with the operator's key, into a creator the hub knows.
DEVICE_CREATOR=c-device
hub_cli enroll-token create --creator "$DEVICE_CREATOR" >/dev/null || fail "enroll-token create failed"
export EDGE_AGENT_PROFILE=device-login EDGE_AGENT_DATA_DIR="$TMP/agent-device-login"
"$TRAY_BIN" >"$TMP/tray-device-login.log" 2>&1 &
TRAY_PID=$!
PIDS+=($TRAY_PID)
wait_for "$TIMEOUT" "the login window (device sign-in)" window_mapped
WIN_ID=$(window_id)
wait_for "$TIMEOUT" "the window to offer 'Get a sign-in code'" window_says "Get a sign-in code"
xdotool windowfocus "$WIN_ID"
click_heading
xdotool key --clearmodifiers Tab ctrl+a
xdotool type --delay 15 "$HUB_URL"
xdotool key --clearmodifiers Return
wait_for "$TIMEOUT" "the window to show a code to approve" window_says "Approve this computer"
read_code() { grep -oE '[A-Z0-9]{4}-[A-Z0-9]{4}' "$TMP/window-text.log" | head -n1 || true; }
CANCELLED_CODE=$(read_code)
[[ -n "$CANCELLED_CODE" ]] || fail "no XXXX-XXXX code in the window: $(cat "$TMP/window-text.log")"
# Cancel ends the wait in the core: a code approved after Cancel enrolls nothing. From the
# page, Tab past "Copy code" and "Open the approval page" to "Cancel".
xdotool windowfocus "$WIN_ID"
click_heading
xdotool key --clearmodifiers Tab Tab Tab Return
wait_for "$TIMEOUT" "Cancel to bring back the form" window_says "Get a sign-in code"
window_says "Approve this computer" && fail "the code is still shown after Cancel: $(cat "$TMP/window-text.log")"
api POST "$HUB_URL/v1/device/approve" "{\"user_code\":\"$CANCELLED_CODE\",\"creatorId\":\"$DEVICE_CREATOR\",\"approve\":true}" \
    >"$TMP/device-approve-cancelled.log" || fail "approving the cancelled code failed: $(cat "$TMP/device-approve-cancelled.log")"
# Two polling intervals (5 s each) and a margin: a wait still running would have redeemed it.
sleep 12
api GET "$HUB_URL/v1/agents" | grep -q "\"creatorId\":\"$DEVICE_CREATOR\"" &&
    fail "a code approved after Cancel enrolled an agent"
log "ok: Cancel stops the wait: the code approved afterwards enrolled nothing"
# A new code: Tab to the hub URL field (still filled in), to "Get a sign-in code", press it.
xdotool windowfocus "$WIN_ID"
click_heading
xdotool key --clearmodifiers Tab Tab Return
wait_for "$TIMEOUT" "the window to show a new code" window_says "Approve this computer"
window_says "The code expires in" || fail "the window shows no time left: $(cat "$TMP/window-text.log")"
window_says "Open the approval page" || fail "the window offers no approval page: $(cat "$TMP/window-text.log")"
USER_CODE=$(read_code)
[[ -n "$USER_CODE" ]] || fail "no XXXX-XXXX code in the window: $(cat "$TMP/window-text.log")"
[[ "$USER_CODE" != "$CANCELLED_CODE" ]] || fail "the new sign-in shows the cancelled code $USER_CODE"
import -window root "$OUT_DIR/tray-device-code.png" || fail "screenshot failed"
log "the window shows the code $USER_CODE"
# The code the window shows is the one the hub waits for: looking it up names this device.
api POST "$HUB_URL/v1/device/lookup" "{\"user_code\":\"$USER_CODE\"}" >"$TMP/device-lookup.log" ||
    fail "the hub does not know the code the window shows: $(cat "$TMP/device-lookup.log")"
grep -q '"status":"pending"' "$TMP/device-lookup.log" || fail "the code is not pending: $(cat "$TMP/device-lookup.log")"
api POST "$HUB_URL/v1/device/approve" "{\"user_code\":\"$USER_CODE\",\"creatorId\":\"$DEVICE_CREATOR\",\"approve\":true}" \
    >"$TMP/device-approve.log" || fail "approving the code failed: $(cat "$TMP/device-approve.log")"
wait_for "$TIMEOUT" "an agent of $DEVICE_CREATOR online at the hub (signed in by code)" window_agent_online_for "$DEVICE_CREATOR"
DEVICE_AGENT=$(window_agent_online_for "$DEVICE_CREATOR")
log "ok: approved on the hub, agent $DEVICE_AGENT of $DEVICE_CREATOR is online"
# Nothing granted on this profile either: the consent screen, then Done, then the status.
wait_for "$TIMEOUT" "the consent screen after sign-in by code" window_says "Choose what this computer may do"
xdotool windowfocus "$WIN_ID"
click_heading
xdotool key --clearmodifiers Tab Tab Tab Tab Tab Tab Tab Tab Tab Return
wait_for "$TIMEOUT" "the window to show agent $DEVICE_AGENT" window_says "$DEVICE_AGENT"
"$AGENT_BIN" --keychain "$EDGE_AGENT_KEYCHAIN" status >"$TMP/agent-device-status.log" 2>&1 ||
    fail "edge-agent status failed: $(cat "$TMP/agent-device-status.log")"
grep -qF "$DEVICE_AGENT" "$TMP/agent-device-status.log" ||
    fail "the keychain holds no login for $DEVICE_AGENT: $(cat "$TMP/agent-device-status.log")"
import -window root "$OUT_DIR/tray-signed-in-by-code.png" || fail "screenshot failed"
no_panic "$TMP/tray-device-login.log"
stop_tray "$TRAY_PID"
log "ok: signed in by code through the window"

log "screenshots in $OUT_DIR"
echo "tray smoke: 14 passed, 0 failed"
