#!/usr/bin/env bash
# make demo: build the three appliance images, launch them side by side under QEMU into one
# deployment (sim platform: the simulated secure processor beside each VM), show the client and
# executor attesting the kms over the mutually attested mesh, check the kms from the host through
# its attestation endpoint, then power everything off cleanly.
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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mesh_port=$(free_port)
attest_port=$(free_port)
echo
echo "== a deployment manifest: every role's pins, the simulated root of this machine, the kms's"
echo "   mesh endpoint as the VMs see it (the host's port forward)"
"$coffer" --state-dir "$state" deployment init --out "$state/deployment.json" --id demo \
  --endpoint "kms=10.0.2.2:$mesh_port"

echo
echo "== booting them into the deployment under QEMU (TCG): config disk + HOST_DATA, each checked"
echo "   by the guest's init against its own evidence before any service starts"
# A fresh data disk each demo: the kms's state is sealed to its image, and a rebuilt image (a
# new measurement) would rightly refuse the last demo's disk.
rm -f "$state/kms-data.img"
"$coffer" --state-dir "$state" run out/images/kms --detach --deployment "$state/deployment.json" \
  --port "mesh=$mesh_port" --port "attest=$attest_port" --data-disk "$state/kms-data.img"
for role in client executor; do
  "$coffer" --state-dir "$state" run "out/images/$role" --detach --deployment "$state/deployment.json"
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
echo "== the mesh: client and executor attest the kms, the kms attests them (serial logs)"
for role in client executor; do
  log="$state/vms/$role/serial.log"
  for _ in $(seq 1 120); do grep -q "mesh-probe: exchanged a request" "$log" && break; sleep 1; done
  grep -m1 "mesh-probe: attested" "$log" | sed "s/^/$role: /" || echo "$role: NOT attested (see $log)"
  grep -m1 "mesh-probe: exchanged a request" "$log" | sed "s/^/$role: /" || true
done
grep "mesh session established" "$state/vms/kms/serial.log" | sed 's/^/kms: /' || true

echo
echo "== people: the kms's attestation endpoint, checked from the host with a fresh nonce"
"$coffer" verify endpoint "https://127.0.0.1:$attest_port" --deployment "$state/deployment.json" \
  --role kms --allow-simulation

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
