#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, boot and test Coffer, and says what it
# does. Safe to run again: it only installs what is missing.
set -euo pipefail

say() { printf 'deps: %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: QEMU (boots the images), musl-tools (musl-gcc for C code in the static
# appliance binaries), git (the reproducibility test clones the checkout), cpio (to inspect
# initramfs images by hand), libtss2-dev + pkg-config (tss-esapi, the Azure vTPM provider), swtpm
# (a software TPM the Azure path is tested against), postgresql (the control plane's test suite
# runs against a private PostgreSQL server as well as SQLite; the package's own cluster is unused).
packages=(qemu-system-x86 musl-tools git cpio libtss2-dev pkg-config swtpm postgresql)
missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present: ${packages[*]}"
fi

# The static target for appliance binaries.
targets=$(rustup target list --installed)
if ! grep -qx x86_64-unknown-linux-musl <<<"$targets"; then
  say "adding the Rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
else
  say "Rust target x86_64-unknown-linux-musl present"
fi

# cargo-fuzz, for `make fuzz` (the fuzz targets of every parser that takes outside input).
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  say "installing cargo-fuzz (crates.io)"
  cargo install --quiet --locked cargo-fuzz
else
  say "cargo-fuzz present"
fi

# The reference SEV-SNP launch-digest calculator, which our tests cross-check against. It lives
# in a virtualenv outside the checkout (Debian's system pip refuses global installs); the Makefile
# puts its bin/ on PATH.
venv="${COFFER_VENV:-$HOME/.cache/coffer/venv}"
installed=$("$venv/bin/python" -m pip show sev-snp-measure 2>/dev/null || true)
if ! "$venv/bin/sev-snp-measure" --help >/dev/null 2>&1 || ! grep -qx 'Version: 0.0.13' <<<"$installed"; then
  say "installing sev-snp-measure 0.0.13 (PyPI) into $venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    say "installing Debian package python3-venv"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check sev-snp-measure==0.0.13
else
  say "sev-snp-measure 0.0.13 present in $venv"
fi

# Schemathesis, which fuzzes the control plane's HTTP API against the OpenAPI description the hub
# serves (services/hub/tests/schemathesis.rs fails, naming this script, without it): same venv.
installed=$("$venv/bin/python" -m pip show schemathesis 2>/dev/null || true)
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1 || ! grep -qx 'Version: 4.32.5' <<<"$installed"; then
  say "installing schemathesis 4.32.5 (PyPI) into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check schemathesis==4.32.5
else
  say "schemathesis 4.32.5 present in $venv"
fi
