#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for `make run` and `make test`:
# the PostgreSQL server binaries (the tests start their own throwaway server
# from them), curl (the install.sh tests run the real one-liner), Chromium
# (the portal's browser tests drive it headless with chromedp) and, best
# effort, shellcheck (lints install.sh). Idempotent; does nothing when they
# are already present.
set -euo pipefail

have_pg() {
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}

pkgs=()
have_pg || pkgs+=(postgresql)
command -v curl >/dev/null 2>&1 || pkgs+=(curl ca-certificates)
have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
have_chromium || pkgs+=(chromium)
want_shellcheck=false
command -v shellcheck >/dev/null 2>&1 || want_shellcheck=true
if [ ${#pkgs[@]} -eq 0 ] && [ "$want_shellcheck" = false ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
else
	SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ ${#pkgs[@]} -gt 0 ]; then
	echo "ensure-deps: installing ${pkgs[*]}" >&2
	$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
if [ "$want_shellcheck" = true ]; then
	$SUDO apt-get install -y -qq --no-install-recommends shellcheck >/dev/null 2>&1 ||
		echo "ensure-deps: shellcheck not installable; the install.sh lint test will skip" >&2
fi
command -v curl >/dev/null 2>&1 || { echo "ensure-deps: curl still missing after install" >&2; exit 1; }
have_chromium || { echo "ensure-deps: chromium still missing after install" >&2; exit 1; }
# The Debian package starts a cluster of its own; the tests do not use it.
if command -v pg_ctlcluster >/dev/null 2>&1; then
	for v in /etc/postgresql/*/main; do
		[ -d "$v" ] || continue
		ver=$(basename "$(dirname "$v")")
		$SUDO pg_ctlcluster "$ver" main stop >/dev/null 2>&1 || true
	done
fi
have_pg || { echo "ensure-deps: PostgreSQL still missing after install" >&2; exit 1; }
