#!/usr/bin/env bash
# Builds Warden's container image from the Dockerfile, tagged redx-warden:<version> and
# redx-warden:latest (or the IMAGE given), with the version as its label.
#
#   scripts/build-image.sh [--offline] [IMAGE]
#
# --offline pulls nothing and reaches no package index from inside the build: it builds
# a Debian base with debootstrap (scripts/build-base-image.sh) and Warden's wheels on
# this host first. The tests build the image this way. Without it the build starts from
# the Dockerfile's default BASE and pip's index.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
offline=false
if [ "${1:-}" = "--offline" ]; then
  offline=true
  shift
fi
python=${PYTHON:-python3}
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
version=$(cd "$root" && "$python" -c 'import warden; print(warden.__version__)')
image=${1:-redx-warden:$version}

args=(--build-arg "VERSION=$version" -t "$image")
[ -z "${1:-}" ] && args+=(-t redx-warden:latest)
wheels="$root/build/image-wheels"
rm -rf "$wheels"
if $offline; then
  . /etc/os-release
  base=warden-base:$VERSION_CODENAME
  bash "$here/build-base-image.sh" "$base"
  # The wheels are made by this host's Debian python3, the same release's as the base's,
  # so they and the dependencies' version markers fit the image's interpreter.
  debian=/usr/bin/python3
  if [ ! -x "$root/build/wheel-venv/bin/pip" ]; then
    "$debian" -m venv "$root/build/wheel-venv"
  fi
  echo "build-image: making wheels in build/image-wheels"
  "$root/build/wheel-venv/bin/pip" wheel -q --disable-pip-version-check --wheel-dir "$wheels" \
    "$root" setuptools wheel
  args+=(--build-arg "BASE=$base" --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/build/image-wheels)
fi
echo "build-image: building $image"
docker build -q "${args[@]}" "$root" >/dev/null
echo "build-image: built $image"
