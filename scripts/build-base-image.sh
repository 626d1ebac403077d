#!/usr/bin/env bash
# Builds a Debian base image for Warden's container image without pulling anything: a
# minimal root made with debootstrap from this machine's own Debian mirror, holding
# python3 and its venv module, loaded with `docker import`. The tests build Warden's
# image on it (scripts/build-image.sh --offline); an ordinary build uses an official
# Python image instead.
#   scripts/build-base-image.sh [IMAGE]      default IMAGE: warden-base:<codename>
set -euo pipefail
. /etc/os-release
codename=${VERSION_CODENAME:?/etc/os-release names no Debian codename}
image=${1:-warden-base:$codename}
# Bump when what goes into the root changes, so an older build is replaced.
revision=1
if [ "$(docker image inspect -f '{{index .Config.Labels "warden.base-image"}}' "$image" 2>/dev/null)" = "$revision" ]; then
  exit 0
fi
command -v debootstrap >/dev/null || {
  echo "build-base-image: installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# The mirror apt already uses here (deb822 sources first, then the one-line format).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "build-base-image: no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "build-base-image: debootstrap $codename into $root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$codename" "$root" "$mirror" >"$root.log" 2>&1 || { cat "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# What a container never reads.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' -c "LABEL warden.base-image=$revision" -c 'CMD ["/bin/bash"]' \
  - "$image" >/dev/null
echo "build-base-image: built $image"
