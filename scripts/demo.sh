#!/usr/bin/env bash
# make demo: build the three appliance images, launch them side by side under QEMU into one
# deployment (sim platform: the simulated secure processor beside each VM), show the client and
# executor attesting the kms over the mutually attested mesh, check the kms from the host through
# its attestation endpoint, run the control plane beside them (its audit log co-signed by the
# attested kms, checked offline with coffer audit verify), then power everything off cleanly.
set -euo pipefail
coffer=${1:?usage: demo.sh PATH-TO-coffer PATH-TO-coffer-hub}
hub=${2:?usage: demo.sh PATH-TO-coffer PATH-TO-coffer-hub}
cd "$(dirname "$0")/.."
state=out/demo-state
mkdir -p "$state"
hub_pid=
cleanup() {
  [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null || true
  "$coffer" --state-dir "$state" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

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
hub_port=$(free_port)
echo
echo "== the control plane's signing key (a fresh hub each demo): the kms will trust it as its"
echo "   control-plane issuer (identity tokens, job grants, audit requests)"
rm -rf "$state/hub"
mkdir -p "$state/hub"
"$hub" --state-dir "$state/hub/state" --issuer https://hub.demo --deployment demo \
  --print-kms-authz > "$state/hub/kms-authz.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("issuer", d["issuers"][0]["issuer"], "key", d["issuers"][0]["jwks"]["keys"][0]["kid"])' "$state/hub/kms-authz.json"

echo
echo "== a deployment manifest: every role's pins, the simulated root of this machine, the kms's"
echo "   mesh endpoint as the VMs see it (the host's port forward), the kms's token issuers"
"$coffer" --state-dir "$state" deployment init --out "$state/deployment.json" --id demo \
  --endpoint "kms=10.0.2.2:$mesh_port" --kms-authz "$state/hub/kms-authz.json"

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
echo "== the control plane (coffer-hub, a host process) beside the VMs: it attests the kms's endpoint"
echo "   against the manifest, then asks it to co-sign each audit checkpoint and collects its decisions"
"$hub" --database "sqlite://$state/hub/hub.db" --state-dir "$state/hub/state" --issuer https://hub.demo \
  --deployment demo --listen "127.0.0.1:$hub_port" --kms-endpoint "https://127.0.0.1:$attest_port" \
  --deployment-manifest "$state/deployment.json" --allow-simulation > "$state/hub/hub.log" 2>&1 &
hub_pid=$!
python3 - "$hub_port" "$state/hub" <<'PY'
import json, re, sys, time, urllib.request
port, dir = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
def call(method, path, token=None, body=None, ok=(200, 201)):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")
password = None
for _ in range(300):
    log = open(f"{dir}/hub.log").read()
    m = re.search(r'created administrator "admin" with password (\S+)', log)
    if m:
        password = m.group(1)
        try:
            call("GET", "/openapi.json")
            break
        except Exception:
            pass
    time.sleep(0.1)
if not password:
    sys.exit("coffer-hub did not start; see " + dir + "/hub.log")
print(f"hub: {base}  (API description: {base}/openapi.json; admin password in {dir}/hub.log)")
token = call("POST", "/v1/auth/login", body={"username": "admin", "password": password})["token"]
call("POST", "/v1/orgs", token, {"id": "acme", "name": "Acme"})
call("POST", "/v1/orgs/acme/workspaces", token, {"name": "research"})
print("hub: signed in as admin, created org acme with workspace research (each an audit entry)")
cp = call("GET", "/v1/audit/checkpoint", token)
open(f"{dir}/hub.vkey", "w").write(cp["verifier_key"])
# The hub signs a checkpoint when the log grew and asks the kms to co-sign it: wait for one
# that covers what we just did.
export = None
for _ in range(300):
    try:
        export = call("GET", "/v1/audit/export?cosigned=true", token)
        if len(export["entries"]) >= cp["size"]:
            break
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise
    time.sleep(0.2)
else:
    sys.exit("the kms co-signed no checkpoint of our actions within 60 s; see " + dir + "/hub.log")
json.dump(export, open(f"{dir}/audit-export.json", "w"))
import base64
for e in export["entries"]:
    entry = json.loads(base64.b64decode(e))
    print(f"  entry {entry['idx']}: {entry['actor']} {entry['action']} {entry['outcome']}")
note = export["checkpoints"][-1]
print(f"hub: the last co-signed checkpoint covers these {len(export['entries'])} entries; its signatures:")
for line in note.splitlines():
    if line.startswith("\u2014 "):
        print("     ", line.split(" ")[1], "(signed)")
PY
kms_vkey=$("$coffer" verify endpoint "https://127.0.0.1:$attest_port" --deployment "$state/deployment.json" \
  --role kms --allow-simulation | awk '/claim audit_signer = / { print $4 }')
echo
echo "== the audit log, checked offline against both keys: the hub's and the one the kms's"
echo "   evidence vouches for (coffer audit verify; exit 0 = every checkpoint signed by both)"
"$coffer" audit verify --log "$state/hub/audit-export.json" --trust "$(cat "$state/hub/hub.vkey")" \
  --trust "$kms_vkey"
kill "$hub_pid" 2>/dev/null || true
hub_pid=

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
