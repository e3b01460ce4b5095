#!/bin/sh
# Fleetplane agent installer (docs/install.md). The control plane serves this
# script at /install.sh with its own public URL filled in:
#
#   curl -fsSL https://<control plane>/install.sh | sudo sh -s -- --token fpe_...
#
# Options:
#   --token TOKEN      enrollment token (fpe_...); needed unless already enrolled
#   --vehicle-id ID    vehicle ID to enroll as (default: the token's, else the server's choice)
#   --prefix DIR       install under DIR (DIR/bin, DIR/etc/fleetplane-agent,
#                      DIR/var/lib/fleetplane-agent) without root and without systemd
#   --no-start         install the systemd unit but neither enable nor start it
#   --force            enroll again even if this machine is enrolled already
#   --server URL       another control plane URL than the one that served this script
#   -h, --help         this help
#
# Order: download to a temporary directory, verify the checksum, enroll, then
# put the binary in place with one rename and start the service. Any failure
# before the rename leaves the machine as it was. Re-running is safe: the same
# binary is kept, an enrolled machine is not enrolled again (unless --force),
# the unit is rewritten and the service restarted only when something changed.
#
# Everything is inside main, called on the last line, so that a download cut
# short never runs half a script.

FLEETPLANE_SERVER_URL=@@SERVER_URL@@

say() { printf 'fleetplane: %s\n' "$*"; }

# die prints one line to stderr and exits; the EXIT trap cleans up.
die() {
	printf 'fleetplane: error: %s\n' "$*" >&2
	exit 1
}

usage() {
	cat <<'EOF'
usage: curl -fsSL <server>/install.sh | sudo sh -s -- --token fpe_... [options]

  --token TOKEN      enrollment token (fpe_...); needed unless already enrolled
  --vehicle-id ID    vehicle ID to enroll as
  --prefix DIR       install under DIR (no root, no systemd)
  --no-start         install the systemd unit but do not enable or start it
  --force            enroll again even if this machine is enrolled already
  --server URL       another control plane URL than the one that served this script
EOF
}

# lastline prints the last non-empty line of file $1, on one line.
lastline() {
	sed -e '/^[[:space:]]*$/d' "$1" 2>/dev/null | tail -n 1 | tr -d '\r'
}

# fetch downloads $1 to $2, or dies with what went wrong.
fetch() {
	curl -fsSL --proto '=http,https' --connect-timeout 15 --retry 2 --retry-delay 2 \
		-o "$2" "$1" 2>"$TMP/curl.err"
	rc=$?
	[ "$rc" -eq 0 ] && return 0
	msg=$(lastline "$TMP/curl.err")
	case $rc in
	6) die "cannot resolve the host of $FLEETPLANE_SERVER_URL ($msg)" ;;
	7 | 28) die "cannot reach the Fleetplane server at $FLEETPLANE_SERVER_URL ($msg)" ;;
	22)
		case $msg in
		*404*) die "the server has no $3 ($1 answered 404)" ;;
		*) die "the server refused $1 ($msg)" ;;
		esac
		;;
	*) die "downloading $1 failed ($msg)" ;;
	esac
}

sha256_of() {
	if [ "$SHA_TOOL" = sha256sum ]; then
		sha256sum "$1" | cut -d ' ' -f 1
	else
		shasum -a 256 "$1" | cut -d ' ' -f 1
	fi
}

# mkdir_tracked creates directory $1 (mode $2) and remembers the topmost
# directory it had to create, so that a failed first install can remove
# exactly what it made.
mkdir_tracked() {
	d=$1
	top=
	while [ -n "$d" ] && [ "$d" != / ] && [ "$d" != . ] && [ ! -e "$d" ]; do
		top=$d
		d=$(dirname "$d")
	done
	mkdir -p "$1" || die "cannot create $1"
	chmod "$2" "$1" || die "cannot set the mode of $1"
	if [ -n "$top" ]; then
		CREATED="$top
$CREATED"
	fi
}

cleanup() {
	rc=$?
	if [ "$rc" -ne 0 ]; then
		[ -n "$STAGED" ] && rm -f "$STAGED"
		# Remove what this run created, newest first; never what existed.
		printf '%s\n' "$CREATED" | while IFS= read -r d; do
			[ -n "$d" ] && rm -rf "$d"
		done
	fi
	[ -n "$TMP" ] && rm -rf "$TMP"
	exit "$rc"
}

main() {
	set -u
	TOKEN='' VEHICLE_ID='' PREFIX='' NO_START=false FORCE=false
	TMP='' STAGED='' CREATED=''
	while [ $# -gt 0 ]; do
		case $1 in
		--token | --vehicle-id | --prefix | --server)
			[ $# -ge 2 ] || die "$1 needs a value"
			opt=$1 val=$2
			shift 2
			;;
		--token=* | --vehicle-id=* | --prefix=* | --server=*)
			opt=${1%%=*} val=${1#*=}
			shift
			;;
		--no-start) NO_START=true && shift && continue ;;
		--force) FORCE=true && shift && continue ;;
		-h | --help) usage && exit 0 ;;
		*) die "unknown option $1 (see --help)" ;;
		esac
		case $opt in
		--token) TOKEN=$val ;;
		--vehicle-id) VEHICLE_ID=$val ;;
		--prefix) PREFIX=$val ;;
		--server) FLEETPLANE_SERVER_URL=$val ;;
		esac
	done
	FLEETPLANE_SERVER_URL=${FLEETPLANE_SERVER_URL%/}
	case $FLEETPLANE_SERVER_URL in
	http://?* | https://?*) ;;
	*) die "no control plane URL: download this script from your Fleetplane server (<server>/install.sh) or pass --server URL" ;;
	esac

	os=$(uname -s)
	[ "$os" = Linux ] || die "unsupported operating system $os: the Fleetplane agent runs on Linux"
	machine=$(uname -m)
	case $machine in
	aarch64 | arm64 | armv8*) ARCH=arm64 ;;
	x86_64 | amd64) ARCH=amd64 ;;
	*) die "unsupported architecture $machine: the Fleetplane agent is built for arm64 (aarch64) and amd64 (x86_64)" ;;
	esac
	NAME=fleetplane-agent-linux-$ARCH

	if [ -n "$PREFIX" ]; then
		case $PREFIX in /*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
		PREFIX=${PREFIX%/}
		BIN_DIR=$PREFIX/bin ETC_DIR=$PREFIX/etc/fleetplane-agent DATA_DIR=$PREFIX/var/lib/fleetplane-agent
	else
		[ "$(id -u)" -eq 0 ] || die "run as root (curl ... | sudo sh -s -- ...), or install under a directory of yours with --prefix DIR"
		BIN_DIR=/usr/local/bin ETC_DIR=/etc/fleetplane-agent DATA_DIR=/var/lib/fleetplane-agent
	fi
	BIN=$BIN_DIR/fleetplane-agent
	# The agent's config, written by enroll, says the machine is enrolled.
	CONFIG=$ETC_DIR/agent.yaml

	command -v curl >/dev/null 2>&1 || die "curl is required"
	if command -v sha256sum >/dev/null 2>&1; then
		SHA_TOOL=sha256sum
	elif command -v shasum >/dev/null 2>&1; then
		SHA_TOOL=shasum
	else
		die "sha256sum or shasum is required to verify the download"
	fi

	ENROLL=true
	if [ -f "$CONFIG" ] && [ "$FORCE" = false ]; then
		ENROLL=false
	fi
	if [ "$ENROLL" = true ] && [ -z "$TOKEN" ]; then
		die "--token is required: create an enrollment token for the fleet (portal, or POST /v1/fleets/{fleet}/enrollment-tokens) and pass --token fpe_..."
	fi

	TMP=$(mktemp -d 2>/dev/null || mktemp -d -t fleetplane) || die "cannot create a temporary directory"
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP

	# 1. The checksum first: when the installed binary already matches it,
	#    the binary is not downloaded again.
	fetch "$FLEETPLANE_SERVER_URL/downloads/$NAME.sha256" "$TMP/$NAME.sha256" "checksum for the linux/$ARCH agent"
	want=$(cut -d ' ' -f 1 <"$TMP/$NAME.sha256" | head -n 1 | tr 'A-F' 'a-f')
	case $want in
	*[!0-9a-f]* | '') die "the server sent a malformed checksum for $NAME" ;;
	esac
	[ "${#want}" -eq 64 ] || die "the server sent a malformed checksum for $NAME"

	# 2. Download and verify the binary unless the installed one matches,
	#    then stage it next to its final place (not in a possibly noexec
	#    /tmp), so that the rename that installs it cannot fail half-way.
	NEW_BINARY=true
	AGENT=$BIN
	if [ -f "$BIN" ] && [ "$(sha256_of "$BIN")" = "$want" ]; then
		NEW_BINARY=false
	else
		fetch "$FLEETPLANE_SERVER_URL/downloads/$NAME" "$TMP/$NAME" "agent for linux/$ARCH"
		got=$(sha256_of "$TMP/$NAME")
		[ "$got" = "$want" ] || die "checksum mismatch for $NAME: expected $want, got $got; nothing was installed"
		mkdir_tracked "$BIN_DIR" 0755
		STAGED=$BIN_DIR/.fleetplane-agent.new
		{ cp "$TMP/$NAME" "$STAGED" && chmod 0755 "$STAGED"; } || die "cannot write $STAGED"
		AGENT=$STAGED
	fi
	VERSION=$("$AGENT" version </dev/null 2>/dev/null | head -n 1)
	[ -n "$VERSION" ] || die "$AGENT does not run on this machine (linux/$ARCH)"

	# 3. Enroll: the agent makes its key here and sends only the public half.
	if [ "$ENROLL" = true ]; then
		mkdir_tracked "$ETC_DIR" 0700
		mkdir_tracked "$DATA_DIR" 0700
		set -- enroll --server "$FLEETPLANE_SERVER_URL" --token "$TOKEN" --dir "$ETC_DIR" --data-dir "$DATA_DIR"
		[ -n "$VEHICLE_ID" ] && set -- "$@" --vehicle-id "$VEHICLE_ID"
		[ "$FORCE" = true ] && set -- "$@" --force
		if ! "$AGENT" "$@" </dev/null >"$TMP/enroll.out" 2>&1; then
			msg=$(lastline "$TMP/enroll.out")
			die "enrollment failed: ${msg:-fleetplane-agent enroll exited with an error}"
		fi
		say "$(lastline "$TMP/enroll.out")"
	else
		say "already enrolled ($CONFIG); pass --force to enroll again"
	fi

	# 4. Install: one rename. From here on nothing is rolled back.
	if [ "$NEW_BINARY" = true ]; then
		mv -f "$STAGED" "$BIN" || die "cannot install $BIN"
		STAGED=
		say "installed $BIN ($VERSION)"
	else
		say "$BIN is up to date ($VERSION)"
	fi
	CREATED=

	# 5. Run it.
	start_cmd="$BIN run --dir $ETC_DIR --data-dir $DATA_DIR"
	if [ -n "$PREFIX" ]; then
		say "installed under $PREFIX; start the agent with: $start_cmd"
	elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
		install_unit
	else
		say "systemd not found; start the agent with: $start_cmd"
	fi
}

# install_unit writes the systemd unit when it changed and starts (or
# restarts) the service when the unit or the binary changed or it is down.
install_unit() {
	unit=/etc/systemd/system/fleetplane-agent.service
	cat >"$TMP/unit" <<'FLEETPLANE_UNIT_EOF'
@@SYSTEMD_UNIT@@
FLEETPLANE_UNIT_EOF
	changed=false
	if ! cmp -s "$TMP/unit" "$unit"; then
		{ cp "$TMP/unit" "$unit.new" && chmod 0644 "$unit.new" && mv -f "$unit.new" "$unit"; } ||
			die "cannot write $unit"
		systemctl daemon-reload || die "systemctl daemon-reload failed"
		changed=true
	fi
	if [ "$NO_START" = true ]; then
		say "systemd unit installed; start the agent with: systemctl enable --now fleetplane-agent"
		return 0
	fi
	systemctl enable fleetplane-agent >/dev/null 2>&1 || die "systemctl enable fleetplane-agent failed"
	if [ "$changed" = true ] || [ "$NEW_BINARY" = true ] || ! systemctl is-active --quiet fleetplane-agent; then
		systemctl restart fleetplane-agent || die "fleetplane-agent did not start: see journalctl -u fleetplane-agent"
	fi
	say "fleetplane-agent is running: systemctl status fleetplane-agent; journalctl -u fleetplane-agent -f"
}

main "$@"
