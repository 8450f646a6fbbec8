#!/usr/bin/env bash
# Installs what medvault needs on a fresh Debian machine: system packages through apt-get
# when missing, uv through pip when missing, then the locked Python environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=/usr/bin/python3
packages=()
[ -x "$PYTHON" ] || packages+=(python3)
# PostgreSQL 15 server and client programs: the tests run throwaway clusters as `postgres`.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || packages+=(postgresql-15)
command -v pg_dump >/dev/null || packages+=(postgresql-client-15)
# libfaketime: tests run backups on a "host" whose clock is minutes off.
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || packages+=(faketime)
# redis-server: the tests back up, restore into and drill with throwaway Redis servers.
command -v redis-server >/dev/null || packages+=(redis-server)
# promtool checks the shipped Prometheus rules (deploy/prometheus/).
command -v promtool >/dev/null || packages+=(prometheus)
for extra in "$@"; do
  case "$extra" in
    bench) command -v restic >/dev/null || packages+=(restic)
           command -v borg >/dev/null || packages+=(borgbackup)
           command -v pgbackrest >/dev/null || packages+=(pgbackrest)
           command -v rclone >/dev/null || packages+=(rclone) ;;
  esac
done
if [ ${#packages[@]} -gt 0 ]; then
  echo "installing system packages: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${packages[@]}" >/dev/null
fi

find_uv() {
  command -v uv 2>/dev/null && return
  python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null || true
}
UV=$(find_uv)
if [ -z "$UV" ]; then
  echo "installing uv"
  pip=(python3 -m pip)
  "${pip[@]}" --version >/dev/null 2>&1 || { apt-get install -y -qq python3-pip >/dev/null; }
  "${pip[@]}" install -q uv 2>/dev/null || "${pip[@]}" install -q --break-system-packages uv \
    || "${pip[@]}" install -q --user --break-system-packages uv
  hash -r
  UV=$(find_uv)
  [ -n "$UV" ] || { echo "uv was installed but cannot be found" >&2; exit 1; }
fi
id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
# Debian's interpreter, not one under root's private home: PostgreSQL's archive_command runs
# medvault as the postgres user, who must be able to execute this venv.
# Azurite, the Azure Blob Storage emulator the tests run azure:// repositories against: into
# the checkout's git-ignored .tools/ (no root needed, and each clone gets the same version).
if [ ! -x .tools/node_modules/.bin/azurite-blob ] && ! command -v azurite-blob >/dev/null; then
  command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }
  echo "installing azurite into .tools/"
  npm install --prefix .tools --no-audit --no-fund --silent azurite@3 >/dev/null
fi
UV_PYTHON="$PYTHON" "$UV" sync --frozen --quiet --compile-bytecode --python "$PYTHON"
# The postgres user runs medvault (archive_command) but cannot write bytecode caches here:
# compile them now, or every wal-push recompiles its imports.
.venv/bin/python -m compileall -q -j 0 src >/dev/null
