#!/usr/bin/env bash
# Runs a command inside a throwaway desktop session: its own D-Bus session bus with an
# unlocked gnome-keyring (a real Secret Service), and HOME in a temp dir so the keyring
# files and any app state vanish afterwards. Cargo and rustup keep their real homes.
#   tests/support/desktop-session.sh <command> [args…]
# Exits with the command's exit code. Before it removes the temp HOME it ends every process
# the session started (bus, keyring, anything the bus activated such as a document portal,
# anything the command left behind) and unmounts what they mounted under it (the document
# portal mounts a FUSE file system at $XDG_RUNTIME_DIR/doc). A clean-up failure is a
# warning, never the exit code: it must not turn a green run red.
set -euo pipefail
if [ -z "${EDGE_IN_DESKTOP_SESSION:-}" ]; then
  export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
  export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
  EDGE_SESSION_HOME="$(mktemp -d /tmp/edge-session-home.XXXXXX)"
  # Every process of the session inherits this variable (a bus-activated service gets the
  # bus daemon's environment, a double-forked daemon keeps its own), so it finds them all,
  # however they were started.
  export EDGE_SESSION_HOME
  marker="EDGE_SESSION_HOME=$EDGE_SESSION_HOME"

  session_pids() {
    # grep -z reads NUL-separated entries, -x matches a whole one; one grep for all of /proc.
    grep -lzxF -- "$marker" /proc/[0-9]*/environ 2>/dev/null | sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p' | grep -vx "$$" || true
  }

  # Sends $1 to every session process, then waits up to $2 tenths of a second for them to go.
  end_session_processes() {
    local signal="$1" tenths="$2" pids
    pids="$(session_pids)"
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086  # one pid per word
    kill "-$signal" $pids 2>/dev/null || true
    for _ in $(seq "$tenths"); do
      [ -z "$(session_pids)" ] && return 0
      sleep 0.1
    done
    return 1
  }

  cleanup_done=""
  cleanup() {
    [ -n "$cleanup_done" ] && return 0
    cleanup_done=1
    set +e
    # The scans below start processes of their own: they must not carry the marker.
    export -n EDGE_SESSION_HOME
    if ! end_session_processes TERM 50; then
      echo "desktop-session: processes ignored SIGTERM for 5 s, killing: $(session_pids | tr '\n' ' ')" >&2
      end_session_processes KILL 50 || echo "desktop-session: warning: still running after SIGKILL: $(session_pids | tr '\n' ' ')" >&2
    fi
    # Deepest mount first; the FUSE document portal refuses rm -rf until unmounted.
    local mount_point
    while read -r mount_point; do
      fusermount3 -u -z "$mount_point" 2>/dev/null || fusermount -u -z "$mount_point" 2>/dev/null \
        || umount -l "$mount_point" 2>/dev/null \
        || echo "desktop-session: warning: could not unmount $mount_point" >&2
    done < <(awk -v home="$EDGE_SESSION_HOME" 'index($5, home "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    rm -rf "$EDGE_SESSION_HOME" 2>/dev/null \
      || echo "desktop-session: warning: could not remove $EDGE_SESSION_HOME (left behind; the command's exit code stands)" >&2
    return 0
  }
  trap cleanup EXIT
  trap 'cleanup; exit 130' INT
  trap 'cleanup; exit 143' TERM

  export HOME="$EDGE_SESSION_HOME"
  export XDG_RUNTIME_DIR="$EDGE_SESSION_HOME/run" XDG_DATA_HOME="$EDGE_SESSION_HOME/share"
  mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
  export EDGE_IN_DESKTOP_SESSION=1
  # Not exec: the clean-up must run after the session ends.
  status=0
  dbus-run-session -- "$0" "$@" || status=$?
  cleanup
  exit "$status"
fi
# Inside the session bus: start the keyring daemon with a throwaway password so the login
# collection exists and is unlocked; it registers org.freedesktop.secrets on this bus.
eval "$(printf 'edge-test' | gnome-keyring-daemon --unlock --components=secrets)" >/dev/null
export GNOME_KEYRING_CONTROL
exec "$@"
