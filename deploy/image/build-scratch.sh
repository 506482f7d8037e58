#!/usr/bin/env bash
# Builds Berth's image with buildah FROM scratch: the local binary, exactly the
# shared libraries ldd names for it, and the CA bundle. Works where no base image
# can be pulled. Usage:
#   deploy/image/build-scratch.sh [BINARY] [IMAGE] [STORAGE_DIR]
# BINARY defaults to build/proxy/berth, IMAGE to localhost/berth:dev, STORAGE_DIR
# (buildah's --root/--runroot, vfs driver) to /var/tmp/berth-buildah.
set -euo pipefail
BIN=${1:-build/proxy/berth}
IMAGE=${2:-localhost/berth:dev}
STORE=${3:-/var/tmp/berth-buildah}
B=(buildah --root "$STORE/root" --runroot "$STORE/runroot" --storage-driver vfs)

[ -x "$BIN" ] || { echo "build-scratch: $BIN is not an executable (build Berth first)" >&2; exit 2; }
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/var/lib/berth"
cp "$BIN" "$rootfs/usr/local/bin/berth"
strip "$rootfs/usr/local/bin/berth" 2>/dev/null || true
# Every library the dynamic loader will ask for, and the loader itself.
ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /ld-linux/ {print $1}' | while read -r lib; do
  cp --parents -L "$lib" "$rootfs"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"

ctr=$("${B[@]}" from scratch)
"${B[@]}" copy "$ctr" "$rootfs" / >/dev/null
"${B[@]}" config --entrypoint '["/usr/local/bin/berth"]' --cmd 'serve --config /etc/berth/berth.yaml' \
  --user 65532:65532 --label org.opencontainers.image.title=berth \
  --label "org.opencontainers.image.version=$("$BIN" version | awk '{print $2}')" "$ctr"
"${B[@]}" commit --quiet "$ctr" "$IMAGE" >/dev/null
"${B[@]}" rm "$ctr" >/dev/null
echo "$IMAGE"
