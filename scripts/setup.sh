#!/usr/bin/env bash
# Install what labgate needs on a Debian machine (run as root): system packages,
# a virtualenv with labgate, and the services the tests talk to.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-system-x86 busybox-static bubblewrap git cpio xz-utils gzip util-linux e2fsprogs
  redis-server build-essential bc bison flex libelf-dev libssl-dev kmod linux-source-6.1 python3-venv chromium
  openssh-server openssh-client rsync  # ssh + rsync: images staged to a labgrid exporter host, as labgrid does
  ccache sparse python3-ply python3-git  # builds through a shared compiler cache; checkpatch's spdxcheck needs ply, git
  clang lld llvm  # plans may build with `toolchain: clang` (LLVM=1)
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm)  # arm64: cross builds, booted under TCG

# PostgreSQL for the tests, unless a server already answers (as on this project's CI machines).
pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || APT_PACKAGES+=(postgresql)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Sandboxes run as unprivileged uids, one per concurrent job slot (config: sandbox.build_uids
# and sandbox.qemu_uids, FIRST:COUNT). They own no home and no login shell on the host.
add_slot_users() {  # add_slot_users PREFIX FIRST COUNT
  for i in $(seq 0 $(($3 - 1))); do
    uid=$(($2 + i))
    getent passwd "$uid" >/dev/null && continue
    groupadd --system --gid "$uid" "$1$i" 2>/dev/null || true
    useradd --system --uid "$uid" --gid "$uid" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "labgate sandbox" "$1$i"
  done
}
if [ "$(id -u)" = 0 ]; then
  add_slot_users labgate-build "${LABGATE_BUILD_UID_FIRST:-64100}" "${LABGATE_BUILD_UID_COUNT:-8}"
  add_slot_users labgate-qemu "${LABGATE_QEMU_UID_FIRST:-64200}" "${LABGATE_QEMU_UID_COUNT:-8}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PYTHON" -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'

# Services for the tests (production uses its own): Redis and PostgreSQL on 127.0.0.1.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "setup: starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || ! psql -h 127.0.0.1 -U postgres -c "select 1" >/dev/null 2>&1; then
  version=$(ls /etc/postgresql | sort -V | tail -1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  # Test machines only: trust local TCP connections, as this project's CI machines do.
  grep -q "labgate-tests" "$hba" || sed -i '1i host all all 127.0.0.1/32 trust # labgate-tests' "$hba"
  echo "setup: starting PostgreSQL $version (local TCP trusted for the tests)"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null ||
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  for _ in $(seq 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
fi
# arm64 boot inputs: Debian's arm64 kernel image and busybox-static:arm64, downloaded with apt and unpacked
# (never installed over the host's) into the lab's cache, where the lab worker finds them (lab/kernel.py;
# LABGATE_CACHE_DIR, default ~/.cache/labgate). apt needs arm64 as a foreign architecture to name them.
if [ "$(id -u)" = 0 ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "setup: adding arm64 as a foreign dpkg architecture (for Debian's arm64 kernel and busybox)"
    dpkg --add-architecture arm64
    apt-get update -q
  fi
  .venv/bin/python - <<'PY' || { echo "setup: fetching the arm64 boot inputs failed"; exit 1; }
import os
from pathlib import Path
from lab.kernel import fetch_debian_busybox, fetch_debian_kernel
cache = Path(os.environ.get("LABGATE_CACHE_DIR", "~/.cache/labgate")).expanduser()
print("setup: arm64 kernel", fetch_debian_kernel(cache / "kernel", arch="arm64"))
print("setup: arm64 busybox", fetch_debian_busybox(cache / "busybox", "arm64"))
PY
fi
echo "setup: done"
