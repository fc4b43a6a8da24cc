#!/usr/bin/env bash
# make demo: build the three appliance images, boot them side by side under QEMU, show each
# healthy from the host, then power them off cleanly.
set -euo pipefail
coffer=${1:?usage: demo.sh PATH-TO-coffer}
cd "$(dirname "$0")/.."
state=out/demo-state
mkdir -p "$state"
trap '"$coffer" --state-dir "$state" stop >/dev/null 2>&1 || true' EXIT

echo "== building the three appliance images (reproducible; see out/images/<role>/manifest.json)"
for role in kms client executor; do
  "$coffer" image build "$role"
done

echo
echo "== their SEV-SNP launch measurements (1 vCPU, EPYC-v4), recomputed from the artifacts and"
echo "   compared with the committed pins in measurements/pins/"
for role in kms client executor; do
  dir="out/images/$role"
  digest=$("$coffer" measure snp --vcpus 1 --vcpu-type EPYC-v4 --ovmf "$dir/firmware.fd" \
    --kernel "$dir/vmlinuz" --initrd "$dir/initramfs.cpio.gz" --append "$(cat "$dir/cmdline")")
  if grep -q "\"$digest\"" "measurements/pins/$role.json"; then verdict="pinned"; else verdict="NOT PINNED (run make pin)"; fi
  printf '%-9s %s  %s\n' "$role" "$digest" "$verdict"
done

echo
echo "== booting them side by side under QEMU (TCG), each with its own forwarded ports"
for role in kms client executor; do
  "$coffer" --state-dir "$state" run "out/images/$role" --detach
done

echo
echo "== the running VMs"
"$coffer" --state-dir "$state" ps
echo
for role in kms client executor; do
  url=$("$coffer" --state-dir "$state" ps | awk -v r="$role" '$1 == r { print $4 }')
  printf '%-9s GET %s -> ' "$role" "$url"
  python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$url"
done

echo
echo "== image sizes"
python3 - <<'PY'
import os
print(f"{'role':<9} {'initramfs (gzip)':>17} {'kernel+initramfs':>17}")
for role in ("kms", "client", "executor"):
    d = f"out/images/{role}"
    initramfs = os.path.getsize(f"{d}/initramfs.cpio.gz") / 2**20
    kernel = os.path.getsize(f"{d}/vmlinuz") / 2**20
    print(f"{role:<9} {initramfs:>13.2f} MiB {initramfs + kernel:>13.2f} MiB")
PY
echo
echo "== powering them off (ACPI power button; each init stops its services in order)"
"$coffer" --state-dir "$state" stop
echo
echo "Serial logs: $state/vms/<role>/serial.log"
