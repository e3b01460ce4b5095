#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for `make run` and `make test`:
# the PostgreSQL server binaries (the tests start their own throwaway server
# from them). Idempotent; does nothing when they are already present.
set -euo pipefail

have_pg() {
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}

if have_pg; then
	exit 0
fi
echo "ensure-deps: PostgreSQL server binaries not found; installing the postgresql package" >&2
if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
else
	SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# The Debian package starts a cluster of its own; the tests do not use it.
if command -v pg_ctlcluster >/dev/null 2>&1; then
	for v in /etc/postgresql/*/main; do
		[ -d "$v" ] || continue
		ver=$(basename "$(dirname "$v")")
		$SUDO pg_ctlcluster "$ver" main stop >/dev/null 2>&1 || true
	done
fi
have_pg || { echo "ensure-deps: PostgreSQL still missing after install" >&2; exit 1; }
