#!/usr/bin/env bash
# Runs a command inside a throwaway desktop session: its own D-Bus session bus with an
# unlocked gnome-keyring (a real Secret Service), and HOME in a temp dir so the keyring
# files and any app state vanish afterwards. Cargo and rustup keep their real homes.
#   tests/support/desktop-session.sh <command> [args…]
set -euo pipefail
if [ -z "${EDGE_IN_DESKTOP_SESSION:-}" ]; then
  export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
  export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
  EDGE_SESSION_HOME="$(mktemp -d /tmp/edge-session-home.XXXXXX)"
  export EDGE_SESSION_HOME
  trap 'rm -rf "$EDGE_SESSION_HOME"' EXIT
  export HOME="$EDGE_SESSION_HOME"
  export XDG_RUNTIME_DIR="$EDGE_SESSION_HOME/run" XDG_DATA_HOME="$EDGE_SESSION_HOME/share"
  mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
  export EDGE_IN_DESKTOP_SESSION=1
  # Not exec: the trap must run after the session ends.
  dbus-run-session -- "$0" "$@"
  exit $?
fi
# Inside the session bus: start the keyring daemon with a throwaway password so the login
# collection exists and is unlocked; it registers org.freedesktop.secrets on this bus.
eval "$(printf 'edge-test' | gnome-keyring-daemon --unlock --components=secrets)" >/dev/null
export GNOME_KEYRING_CONTROL
exec "$@"
