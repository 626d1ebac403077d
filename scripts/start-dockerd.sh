#!/usr/bin/env bash
# Starts Debian's dockerd in the background when no Docker engine answers, and waits
# until it does. Warden's tests call this again after they stop the engine on purpose.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
log=${WARDEN_DOCKERD_LOG:-/tmp/warden-dockerd.log}
# An engine that is still starting or shutting down holds the pid file: wait for it to
# answer or to exit. A stale pid file from a killed engine stops a new one starting.
alive() {  # a zombie nobody reaped yet (as under a bare PID namespace) counts as gone
  [ -e "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
for _ in $(seq 60); do
  [ -f /var/run/docker.pid ] && alive "$(cat /var/run/docker.pid)" || break
  if docker info >/dev/null 2>&1; then exit 0; fi
  sleep 0.5
done
if [ -f /var/run/docker.pid ] && ! alive "$(cat /var/run/docker.pid)"; then
  rm -f /var/run/docker.pid
fi
echo "start-dockerd: starting dockerd (log: $log)"
setsid dockerd --iptables=false --ip-masq=false >>"$log" 2>&1 < /dev/null &
for _ in $(seq 120); do
  if docker info >/dev/null 2>&1; then exit 0; fi
  sleep 0.5
done
echo "start-dockerd: dockerd did not answer within 60 s; its log:" >&2
tail -n 30 "$log" >&2
exit 1
