#!/usr/bin/env bash
# Builds the image Warden's tests and demo run, offline: `docker import` of a folder
# holding Debian's busybox-static. Nothing is ever pulled.
set -euo pipefail
image=${WARDEN_TEST_IMAGE:-warden-test:latest}
# Bump when the image's contents change, so an older build is replaced.
revision=2
if [ "$(docker image inspect -f '{{index .Config.Labels "warden.test-image"}}' "$image" 2>/dev/null)" = "$revision" ]; then
  exit 0
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/tmp" "$dir/www"
cp /bin/busybox "$dir/bin/busybox"
for applet in sh sleep true false cat echo ls touch rm mkdir test kill httpd; do
  ln -s busybox "$dir/bin/$applet"
done
echo ok > "$dir/www/index.html"
tar -C "$dir" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' -c "LABEL warden.test-image=$revision" - "$image" >/dev/null
echo "build-test-image: built $image"
