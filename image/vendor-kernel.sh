#!/usr/bin/env bash
# Re-creates image/vendor/kernel/ from the Debian kernel package pinned in image/inputs.lock.
#
# The images boot Debian's signed-off, widely reviewed kernel rather than one we compile: we take
# vmlinuz and the few modules the images load. Debian replaces kernel packages on every point
# release and old ones leave the archive, so the files are vendored (launch measurements depend
# on their exact bytes) and this script documents, and repeats, how they were obtained:
#   1. `apt-get download` the exact package version named in the lock file;
#   2. check the .deb's sha256 against the lock file;
#   3. extract vmlinuz and the listed modules (with their directory layout).
# `coffer image build` then checks every vendored file against its sha256 in the lock file.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=image/inputs.lock
field() { sed -n "/^\[kernel\]/,/^\[/ s/^$1 *= *\"\(.*\)\"/\1/p" "$lock" | head -n1; }
package=$(field package)
version=$(field version)
deb_sha256=$(field deb_sha256)
release=$(field release)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "vendor-kernel: downloading $package=$version from Debian"
(cd "$work" && apt-get download "$package=$version")
deb=$(ls "$work"/*.deb)
got=$(sha256sum "$deb" | cut -d' ' -f1)
if [ "$got" != "$deb_sha256" ]; then
  echo "vendor-kernel: $deb: sha256 mismatch: expected $deb_sha256, got $got" >&2
  exit 1
fi
dpkg-deb -x "$deb" "$work/x"
out=image/vendor/kernel
rm -rf "$out" && mkdir -p "$out"
cp "$work/x/boot/vmlinuz-$release" "$out/vmlinuz"
# Every module path listed in the lock file (relative to the package's module tree).
sed -n 's/^path *= *"image\/vendor\/kernel\/modules\/\(.*\.ko\)"/\1/p' "$lock" | while read -r rel; do
  mkdir -p "$out/modules/$(dirname "$rel")"
  cp "$work/x/lib/modules/$release/$rel" "$out/modules/$rel"
done
echo "vendor-kernel: extracted into $out; run 'coffer image build kms' to check the sha256s"
