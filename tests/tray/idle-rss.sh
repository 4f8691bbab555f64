#!/usr/bin/env bash
# Memory of the tray app, for `cargo xtask bench tray`: the release tray, logged in to a
# real hub and online, icon docked in an XEmbed tray host.
#  1. Window closed (the default when logged in): 30 s after start the whole process tree
#     is measured by `$RSS_TOOL tree-rss <pid>` (RSS) and `$RSS_TOOL tree-pss` (PSS).
#  2. Window open: a second launch with --show hands over to the running instance, which
#     opens its window (and WebKit's web and network processes); once it is on screen and
#     OPEN_SECS have passed, the tree's PSS again.
# PSS, not RSS, for the open window: the WebKit processes map the same libraries as the
# tray, and RSS would count those pages once per process. Markdown rows go to stdout.
#
# Runs inside tests/support/desktop-session.sh (session bus + unlocked gnome-keyring).
# Env: HUB_BIN, AGENT_BIN, TRAY_BIN, RSS_TOOL; optional IDLE_SECS (default 30), OPEN_SECS
# (default 20).
set -euo pipefail
: "${HUB_BIN:?}" "${AGENT_BIN:?}" "${TRAY_BIN:?}" "${RSS_TOOL:?}"
[[ -n "${DBUS_SESSION_BUS_ADDRESS:-}" ]] || { echo "idle-rss: run me inside tests/support/desktop-session.sh" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/edge-tray-rss.XXXXXX")
SCRIPT_NAME="tray idle-rss"
# shellcheck source=tests/tray/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'stop_all; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

start_xvfb
start_trayer
start_hub
export EDGE_AGENT_KEYCHAIN=secret-service EDGE_AGENT_DATA_DIR="$TMP/agent-data"
login_with_cli
unset EDGE_AGENT_SHOW_WINDOW
# No webview exists while the window is closed; these apply from when it is opened (in
# this process: a second launch only asks it to show its window).
webkit_software_rendering

"$TRAY_BIN" >"$TMP/tray.log" 2>&1 &
TRAY_PID=$!
PIDS+=($TRAY_PID)
agents_online() { api GET "$HUB_URL/v1/agents" | grep -q '"online":true'; }
wait_for 30 "the tray's agent to be online" agents_online
sleep "${IDLE_SECS:-30}"
alive "$TRAY_PID" || fail "the tray app died while idle"
"$RSS_TOOL" tree-rss "$TRAY_PID"
"$RSS_TOOL" tree-pss "$TRAY_PID" "window closed" 80

"$TRAY_BIN" --show >"$TMP/tray-second.log" 2>&1 || fail "the second launch (--show) failed"
window_viewable() {
    local id
    id=$(xwininfo -root -tree | awk '/"Edge Agent"/ {print $1; exit}')
    [[ -n "$id" ]] && xwininfo -id "$id" | grep -q 'Map State: IsViewable'
}
wait_for 30 "the window to open" window_viewable
sleep "${OPEN_SECS:-20}"
alive "$TRAY_PID" || fail "the tray app died with its window open"
"$RSS_TOOL" tree-pss "$TRAY_PID" "window open" 250
