#!/bin/busybox sh
# /init of the QEMU guest that `cargo xtask bench hub` boots for its idle-session row when
# its own descriptor limit is too low for 50,000 sessions (see xtask/src/bench_vm.rs). The
# guest is a kernel and this archive, nothing else: busybox, edge-hub, edge-loadgen and the
# libraries they link, and in /data a hub database with an API key and the enrollment
# tokens. It runs the same steps as the xtask's own idle run, prints one line starting
# EDGE_IDLE_RESULT (or EDGE_IDLE_FAILED with the reason) and powers off.

/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
ip link set lo up

fail() {
    echo "EDGE_IDLE_FAILED $*"
    [ -f /tmp/hub/hub.out ] && tail -n 5 /tmp/hub/hub.out
    poweroff -f
}

# The reason for the guest: here the limit is ours to raise.
ulimit -n 1048576 || fail "cannot raise the descriptor limit"
# The host made the database, its API key and AGENTS enrollment tokens (under emulation
# making 50,000 tokens here would take longer than the whole run).
DIR=/tmp/hub
mkdir -p "$DIR"
cp /data/* "$DIR/" || fail "nothing in /data"
DB="sqlite://$DIR/hub.db"
AGENTS=$(wc -l <"$DIR/tokens.txt")
KEY=$(cat "$DIR/api-key")

EDGE_HUB_LOG=warn /bin/edge-hub --database-url "$DB" serve --listen 127.0.0.1:0 --hb-interval-secs 25 >"$DIR/hub.out" 2>&1 &
HUB_PID=$!
URL=
for _ in $(seq 600); do
    URL=$(grep -o 'http://127.0.0.1:[0-9]*' "$DIR/hub.out" | head -n 1)
    [ -n "$URL" ] && break
    sleep 0.1
done
[ -n "$URL" ] || fail "the hub did not say where it listens"

# As the xtask's idle run: several source addresses (one runs out of ephemeral ports near
# 28,000), one slot each, held 20 s. Under emulation 50,000 hellos take minutes, not
# seconds. Its progress lines go to the console.
/bin/edge-loadgen idle --hub "$URL" --api-key "$KEY" --tokens "$DIR/tokens.txt" --agents "$AGENTS" \
    --source-ips 8 --slots 1 --hold-secs 20 --hello-timeout-secs 1200 >"$DIR/lg.out" 2>/dev/console &
LOADGEN_PID=$!
CONNECTED=
while kill -0 "$LOADGEN_PID" 2>/dev/null; do
    CONNECTED=$(grep -o '"connected":[0-9]*' "$DIR/lg.out" | head -n 1 | cut -d: -f2)
    [ -n "$CONNECTED" ] && break
    sleep 0.2
done
[ -n "$CONNECTED" ] || fail "edge-loadgen ended before its sessions connected"
sleep 10
kill -0 "$HUB_PID" 2>/dev/null || fail "the hub died with $CONNECTED sessions"
RSS=$(awk '/^VmRSS:/ { print $2 }' "/proc/$HUB_PID/status")
PEAK=$(awk '/^VmHWM:/ { print $2 }' "/proc/$HUB_PID/status")
wait "$LOADGEN_PID" || fail "edge-loadgen idle failed"
echo "EDGE_IDLE_RESULT {\"connected\":$CONNECTED,\"rss_kib\":$RSS,\"peak_rss_kib\":$PEAK}"
poweroff -f
