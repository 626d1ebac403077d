#!/usr/bin/env bash
# Installs and starts what Warden's tests and demo need on a Debian machine, as root:
# Debian's docker.io, redis-server, redis-sentinel, haproxy and busybox-static, debootstrap (the base of
# the container image the tests build), systemd (systemd-analyze checks the unit) and prometheus
# (promtool lints /metrics and tests the alert rules), a Python
# venv in .venv with Warden and its test extras, a running dockerd, and the offline test image.
# Safe to run again: it only does what is missing. Source it or run it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

# WARDEN_SETUP=venv: only the venv (what the unit tier needs: no Docker, no Redis).
only_venv=false
[ "${WARDEN_SETUP:-}" = venv ] && only_venv=true

need=()
if ! $only_venv; then
command -v dockerd >/dev/null || need+=(docker.io)
command -v redis-server >/dev/null || need+=(redis-server)
command -v haproxy >/dev/null || need+=(haproxy)
# the central Redis's failover tests run three Sentinels
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v systemd-analyze >/dev/null || need+=(systemd)
# promtool lints /metrics and tests the alert rules
command -v promtool >/dev/null || need+=(prometheus)
command -v ps >/dev/null || need+=(procps)
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x "$root/.venv/bin/python" ]; then
  echo "setup: creating $root/.venv"
  python3 -m venv "$root/.venv"
fi
"$root/.venv/bin/pip" install -q --disable-pip-version-check -e "$root[test]"

$only_venv && exit 0
bash "$here/start-dockerd.sh"
bash "$here/build-test-image.sh"
