#!/usr/bin/env bash
# Idle memory of the tray app, for `cargo xtask bench`: the release tray, logged in to a
# real hub and online, window closed (the default when logged in), icon docked in an
# XEmbed tray host; 30 s after start the whole process tree (WebKit's web and network
# processes included) is measured by `$RSS_TOOL tree-rss <pid>`, whose Markdown rows go to
# stdout.
#
# Runs inside tests/support/desktop-session.sh (session bus + unlocked gnome-keyring).
# Env: HUB_BIN, AGENT_BIN, TRAY_BIN, RSS_TOOL; optional IDLE_SECS (default 30).
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
# No webview is created while the window stays closed, so no rendering settings here.
unset EDGE_AGENT_SHOW_WINDOW

"$TRAY_BIN" >"$TMP/tray.log" 2>&1 &
TRAY_PID=$!
PIDS+=($TRAY_PID)
agents_online() { api GET "$HUB_URL/v1/agents" | grep -q '"online":true'; }
wait_for 30 "the tray's agent to be online" agents_online
sleep "${IDLE_SECS:-30}"
alive "$TRAY_PID" || fail "the tray app died while idle"
"$RSS_TOOL" tree-rss "$TRAY_PID"
