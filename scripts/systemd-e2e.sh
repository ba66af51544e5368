#!/usr/bin/env bash
# End-to-end test of systemd/dicom-cache-warmer.service under a real systemd: boots a minimal
# Debian (debootstrap, variant minbase, plus systemd, dbus and curl) with
# `systemd-nspawn --boot` in the host's network namespace, so the host's Redis and PostgreSQL
# answer on 127.0.0.1, installs the daemon there exactly as the README's systemd section says
# (its ```sh block is run as it stands; only the site's values are filled in), then checks what
# `systemd-analyze verify` cannot: READY=1, the watchdog, the restart policy, the stop, the
# sandbox, the drop-ins. One PASS/FAIL line per check; exits non-zero on any failure.
#
#   bash scripts/systemd-e2e.sh            (as root; from .ci/run after scripts/test.sh)
#
# Environment:
#   DCW_E2E_CACHE    where the Debian root is kept between runs (default .dev/systemd-e2e); the
#                    root is rebuilt when the package list below changes
#   DCW_E2E_MIRROR   the Debian mirror for debootstrap (default: the host's apt source)
#   DCW_E2E_BINARY   the release binary (default target/release/dicom-cache-warmer: build it
#                    first with cargo build --release --locked --bin dicom-cache-warmer)
#   CI=true          a machine where the container cannot boot fails instead of skipping
#
# Everything it touches is its own: a database dcw_e2e_<random> (created, migrated, dropped),
# stream, group and dead-letter keys dcw-e2e-<random>… (deleted at the end), a free TCP port
# for http.listen (the container shares the host's network, where 9464 may be taken), and a
# container booted from a read-only root with a throw-away overlay (--volatile=overlay),
# terminated on exit whatever happens. Installs debootstrap and systemd-container with apt
# when missing.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

readonly UNIT=dicom-cache-warmer
readonly SUITE=bookworm
# The packages inside the root besides minbase; changing the list rebuilds the root.
readonly PACKAGES=(systemd systemd-sysv dbus curl ca-certificates)
# Bumped when the way the root is prepared changes (rebuilds it too).
readonly ROOT_RECIPE=1
readonly CACHE=${DCW_E2E_CACHE:-$REPO/.dev/systemd-e2e}
readonly BINARY=${DCW_E2E_BINARY:-$REPO/target/release/dicom-cache-warmer}
readonly IN_CI=${CI:-false}
readonly START=$SECONDS

passes=0
failures=0
pass() {
    passes=$((passes + 1))
    printf 'PASS: %s\n' "$*"
}
fail() {
    failures=$((failures + 1))
    printf 'FAIL: %s\n' "$*"
}
say() { printf 'systemd-e2e: %s\n' "$*"; }
die() {
    printf 'systemd-e2e: FAILED: %s\n' "$*" >&2
    exit 1
}
# Only where systemd-nspawn --boot cannot work; never in CI.
skip() {
    if [ "$IN_CI" = true ]; then
        die "cannot run here, and CI=true does not skip: $*"
    fi
    say "SKIPPED: $*"
    exit 0
}

# --- can a container boot here? ------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "systemd-nspawn --boot needs root (run as root, or in CI)"
cap_eff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
# CAP_SYS_ADMIN is bit 21: mounts and namespaces for the container.
(((16#$cap_eff >> 21) & 1)) || skip "no CAP_SYS_ADMIN (an unprivileged container): systemd-nspawn cannot set up a container"
if [ -z "$(ls -A /sys/fs/cgroup 2> /dev/null)" ]; then
    skip "no cgroup file system at /sys/fs/cgroup: systemd cannot boot in a container"
fi
[ -x "$BINARY" ] || die "no release binary at $BINARY: cargo build --release --locked --bin dicom-cache-warmer"

apt_updated=false
apt_install() {
    if [ "$apt_updated" = false ]; then
        apt-get update -qq
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" > /dev/null
}
missing=()
command -v debootstrap > /dev/null || missing+=(debootstrap)
command -v systemd-nspawn > /dev/null || missing+=(systemd-container)
command -v nsenter > /dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt"
    apt_install "${missing[@]}"
fi

# Redis and PostgreSQL as the test suite has them (starts private ones when none answers).
# shellcheck source=scripts/services.sh
source scripts/services.sh > /dev/null
command -v psql > /dev/null || apt_install postgresql-client
command -v redis-cli > /dev/null || apt_install redis-tools

# --- the Debian root, cached --------------------------------------------------------------
mirror=${DCW_E2E_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^URIs: *\([^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2> /dev/null | head -n 1)
    mirror=${mirror:-$(awk '$1 == "deb" && $2 ~ /debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2> /dev/null)}
    mirror=${mirror:-http://deb.debian.org/debian}
fi
key=$(printf '%s\n' "$SUITE" "$ROOT_RECIPE" "${PACKAGES[@]}" | sha256sum | cut -c1-12)
root=$CACHE/$SUITE-$key
mkdir -p "$CACHE"
exec 9> "$CACHE/lock"
flock 9 # one build of the root at a time; concurrent runs then share it read-only
if [ ! -e "$root/.complete" ]; then
    say "building the Debian root $root (debootstrap $SUITE from $mirror; cached for later runs)"
    started=$SECONDS
    rm -rf "$root.tmp"
    include=$(
        IFS=,
        echo "${PACKAGES[*]}"
    )
    if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$root.tmp" "$mirror" \
        > "$CACHE/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE/debootstrap.log" >&2
        die "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    # Quiet and quick to boot: no timers that run apt, no login prompt on the console, no
    # packages' archives.
    chroot "$root.tmp" systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer \
        dpkg-db-backup.timer e2scrub_all.timer fstrim.timer console-getty.service 2> /dev/null || true
    chroot "$root.tmp" apt-get clean
    rm -f "$root.tmp/etc/hostname" "$root.tmp/etc/machine-id"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root.tmp/etc/hosts"
    touch "$root.tmp/.complete"
    rm -rf "$root"
    mv "$root.tmp" "$root"
    say "root built in $((SECONDS - started)) s ($(du -sh "$root" | cut -f1))"
    # Older roots of other package lists are of no more use.
    find "$CACHE" -mindepth 1 -maxdepth 1 -type d -name "$SUITE-*" ! -name "$SUITE-$key" \
        -exec rm -rf {} + 2> /dev/null || true
else
    say "using the cached Debian root $root"
fi
flock -u 9

# --- what is private to this run -----------------------------------------------------------
run_id=$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')
machine=dcw-e2e-$run_id
database=dcw_e2e_$run_id
stream_key=dcw-e2e-$run_id:ingest
group=dcw-e2e-$run_id
dead_letter_key=dcw-e2e-$run_id:ingest:dead
admin_url=$DCW_TEST_DATABASE_URL
database_url=${admin_url%/*}/$database
redis_url=$DCW__REDIS__URL
# A free port (the container shares the host's network).
free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}
port=$(free_port) || die "no free port"
work=$(mktemp -d /tmp/dcw-e2e.XXXXXX)

nspawn_pid=
blackhole_pid=
registered=false
cleanup() {
    local status=$?
    set +e
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2> /dev/null; then
        if [ "$registered" = true ]; then
            machinectl terminate "$machine" 2> /dev/null
        else
            # systemd-nspawn turns SIGTERM into an orderly shutdown of the container.
            kill -TERM "$nspawn_pid" 2> /dev/null
        fi
        for _ in $(seq 1 30); do
            kill -0 "$nspawn_pid" 2> /dev/null || break
            sleep 0.5
        done
        if kill -0 "$nspawn_pid" 2> /dev/null; then
            kill -KILL "$nspawn_pid" 2> /dev/null
            sleep 1
        fi
    fi
    [ -z "$blackhole_pid" ] || kill "$blackhole_pid" 2> /dev/null
    psql -q "$admin_url" -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" > /dev/null 2>&1 \
        || psql -q "$admin_url" -c "DROP DATABASE IF EXISTS \"$database\"" > /dev/null 2>&1
    redis_cli DEL "$stream_key" "$dead_letter_key" > /dev/null 2>&1
    # The daemon's bookkeeping keys for this group (dcw:{group}:…).
    redis_cli --scan --pattern "dcw:$group:*" 2> /dev/null | while read -r k; do
        redis_cli DEL "$k" > /dev/null
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
redis_cli() { redis-cli -u "$redis_url" --no-auth-warning "$@"; }

say "run $run_id: machine $machine, database $database, stream $stream_key, port $port"
psql -q "$admin_url" -c "CREATE DATABASE \"$database\"" > /dev/null
DCW__DATABASE__URL=$database_url "$BINARY" migrate > "$work/migrate.log" 2>&1 \
    || die "migrate failed: $(tail -n 5 "$work/migrate.log")"

# --- boot -----------------------------------------------------------------------------------
# What the README's commands need from a checkout, mounted read-only at /src.
stage=$work/src
mkdir -p "$stage/target/release"
cp "$BINARY" "$stage/target/release/dicom-cache-warmer"
cp -r config systemd "$stage/"
nspawn_args=(--boot --quiet --machine="$machine" --directory="$root" --volatile=overlay
    --bind-ro="$stage:/src" --console=read-only)
if [ -d /run/systemd/system ] && command -v machinectl > /dev/null; then
    registered=true # a host booted with systemd: register the machine (machinectl terminate)
else
    nspawn_args+=(--register=no --keep-unit) # no systemd on the host: no machined, no scope
fi
booted_at=$SECONDS
systemd-nspawn "${nspawn_args[@]}" < /dev/null > "$work/console.log" 2>&1 &
nspawn_pid=$!

# The container's PID 1: the descendant of systemd-nspawn that is PID 1 in a new PID namespace.
container_init() {
    local queue=("$nspawn_pid") pid kids
    while [ ${#queue[@]} -gt 0 ]; do
        pid=${queue[0]}
        queue=("${queue[@]:1}")
        if awk '/^NSpid:/ { exit !(NF > 2 && $NF == 1) }' "/proc/$pid/status" 2> /dev/null; then
            echo "$pid"
            return 0
        fi
        kids=$(pgrep -P "$pid" || true)
        # shellcheck disable=SC2206 # pids: one word each
        queue+=($kids)
    done
    return 1
}
leader=
# Runs a command inside the container (its mount, PID, IPC, UTS and cgroup namespaces) with a
# clean environment; the network is the host's anyway.
ct() {
    nsenter --target "$leader" --mount --uts --ipc --pid --cgroup -- \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
state=
for _ in $(seq 1 120); do
    kill -0 "$nspawn_pid" 2> /dev/null || break
    leader=${leader:-$(container_init || true)}
    if [ -n "$leader" ]; then
        state=$(ct systemctl is-system-running 2> /dev/null || true)
        case $state in running | degraded) break ;; esac
    fi
    sleep 0.5
done
case $state in
    running | degraded)
        pass "boot: systemd-nspawn --boot, $(ct systemctl --version | head -n 1) is $state after $((SECONDS - booted_at)) s"
        ;;
    *)
        tail -n 30 "$work/console.log" >&2
        nspawn_pid_alive=no
        kill -0 "$nspawn_pid" 2> /dev/null && nspawn_pid_alive=yes
        # A container that cannot come up is a machine that cannot run this test: outside
        # CI that is a skip, in CI a failure.
        skip "the container did not boot (state '${state:-none}', systemd-nspawn running: $nspawn_pid_alive)"
        ;;
esac
if [ "$state" = degraded ]; then
    say "degraded container, failed units: $(ct systemctl --failed --plain --no-legend | awk '{ print $1 }' | tr '\n' ' ')"
fi

# --- helpers for the checks -----------------------------------------------------------------
# From here on a command that fails shows in the checks' results: the run goes on.
set +e
prop() { ct systemctl show --property="$1" --value "$UNIT"; }
http_code() {
    ct curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$port/$1" 2> /dev/null || true
}
journal() { ct journalctl -u "$UNIT" --no-pager -o cat "$@" 2> /dev/null || true; }
show_journal() {
    echo "  --- journal of $UNIT (last 25 lines) ---"
    journal -n 25 | sed 's/^/  | /'
}
# Waits up to $1 seconds for the command after it to succeed; true when it does.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    while [ "$SECONDS" -lt "$deadline" ]; do
        if "$@"; then return 0; fi
        sleep 1
    done
    "$@"
}
unit_ready() { [ "$(prop ActiveState)" = active ] && [ "$(http_code readyz)" = 200 ]; }
restarted_at_least() { [ "$(prop NRestarts)" -ge "$1" ]; }
replaced() { # the unit runs again, with another main process than $1
    local pid
    pid=$(prop MainPID)
    [ "$pid" != "$1" ] && [ "$pid" != 0 ] && [ "$(prop ActiveState)" = active ]
}
unit_value() { sed -n "s/^$1=//p" systemd/dicom-cache-warmer.service | tail -n 1; }
seconds_of() { # 30, 30s, 5min -> seconds
    case $1 in
        *min) echo $((${1%min} * 60)) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}
watchdog_sec=$(seconds_of "$(unit_value WatchdogSec)")
stop_timeout=$(seconds_of "$(unit_value TimeoutStopSec)")
restart_sec=$(seconds_of "$(unit_value RestartSec)")
dropins=/etc/systemd/system/$UNIT.service.d
# A drop-in of the test's own (under /run, so apart from the site's drop-ins in /etc).
test_dropin() { # name, content ("" removes it)
    if [ -n "$2" ]; then
        printf '%s\n' "$2" | ct sh -c "mkdir -p /run/systemd/system/$UNIT.service.d && cat > /run/systemd/system/$UNIT.service.d/$1.conf"
    else
        ct rm -f "/run/systemd/system/$UNIT.service.d/$1.conf"
    fi
    ct systemctl daemon-reload
}
# Runs a command as the service's user in the service's own mount namespace (its sandbox).
in_sandbox() {
    local pid=$1
    shift
    ct nsenter --target "$pid" --mount -- setpriv --reuid=dicom --regid=dicom --clear-groups "$@"
}

# --- install as the README says -------------------------------------------------------------
# The README's systemd section: its first ```sh block.
readme_block=$(awk '
    /^### systemd/ { in_section = 1; next }
    in_section && /^#/ { exit }
    in_section && /^```sh/ { in_block = 1; next }
    in_block && /^```/ { exit }
    in_block { print }' README.md)
[ -n "$readme_block" ] || die "README.md: no \`\`\`sh block in the systemd section"
# Split where the unit is started: the site's values go into the environment file before.
install_part=$(printf '%s\n' "$readme_block" | sed '/systemctl daemon-reload/,$d' | grep -v '^cargo ')
start_part=$(printf '%s\n' "$readme_block" | sed -n '/systemctl daemon-reload/,$p' | grep -v 'journalctl .*-f')
# A site without passwords: the README's placeholders left empty.
install_part=${install_part//\'REDIS-PASSWORD\'/\'\'}
install_part=${install_part//\'DB-PASSWORD\'/\'\'}
start_part=${start_part//localhost:9464/localhost:$port}
printf '%s\n' "$install_part" > "$work/readme-install.sh"
printf '%s\n' "$start_part" > "$work/readme-start.sh"
# A file under /home, for ProtectHome=read-only (sites may keep their roots there).
ct sh -c 'mkdir -p /home/site && echo kept > /home/site/marker'

install_ok=true
if ! ct sh -euc "cd /src && $(cat "$work/readme-install.sh")" > "$work/install.log" 2>&1; then
    install_ok=false
    sed 's/^/  | /' "$work/install.log"
fi
# The site's values, as an operator edits the environment file.
env_file=/etc/dicom-cache-warmer/dicom-cache-warmer.env
ct sed -i \
    -e "s#^DCW__REDIS__URL=.*#DCW__REDIS__URL=$redis_url#" \
    -e "s#^DCW__DATABASE__URL=.*#DCW__DATABASE__URL=$database_url#" \
    -e "s#^\# *DCW__STREAM__KEY=.*#DCW__STREAM__KEY=$stream_key#" \
    -e "s#^\# *DCW__STREAM__GROUP=.*#DCW__STREAM__GROUP=$group#" \
    -e "s#^\# *DCW__STREAM__DEAD_LETTER_KEY=.*#DCW__STREAM__DEAD_LETTER_KEY=$dead_letter_key#" \
    -e "s#^DCW__HTTP__LISTEN=.*#DCW__HTTP__LISTEN=127.0.0.1:$port#" \
    "$env_file" || install_ok=false
for var in REDIS__URL DATABASE__URL STREAM__KEY STREAM__GROUP STREAM__DEAD_LETTER_KEY HTTP__LISTEN; do
    ct grep -q "^DCW__$var=" "$env_file" || {
        echo "  the environment file has no DCW__$var= line to edit"
        install_ok=false
    }
done
started_at=$SECONDS
if ! ct sh -euc "$(cat "$work/readme-start.sh")" > "$work/start.log" 2>&1; then
    install_ok=false
    sed 's/^/  | /' "$work/start.log"
fi
if [ "$install_ok" = true ]; then
    pass "install: the README's commands (binary, dicom user, config, env file, empty credential files, unit, enable --now, status, curl /readyz) ran without error"
else
    fail "install: the README's commands failed (above)"
fi
credentials=$(ct stat -c '%n %a %U %s' /etc/dicom-cache-warmer/credentials /etc/dicom-cache-warmer/credentials/redis-password /etc/dicom-cache-warmer/credentials/database-password 2> /dev/null | tr '\n' ',' || true)
say "credentials as installed: $credentials"

main_pid=$(prop MainPID)
if [ "$(prop ActiveState)/$(prop SubState)" = active/running ] && [ "$(http_code readyz)" = 200 ]; then
    pass "no passwords: with empty credential files (a site whose Redis and PostgreSQL have none) the unit is active (running) after $((SECONDS - started_at)) s and /readyz answers 200"
else
    fail "no passwords: with empty credential files the unit is $(prop ActiveState)/$(prop SubState), /readyz $(http_code readyz)"
    show_journal
fi
if journal | grep -q 'shorter than the liveness window'; then
    fail "watchdog window: with the unit as shipped the daemon warns: $(journal | grep -m 1 'shorter than the liveness window')"
else
    pass "watchdog window: WatchdogSec=${watchdog_sec} is not shorter than the default liveness window (no warning at start)"
fi

# --- hardening: the sandbox of the running service ----------------------------------------
if [ "${main_pid:-0}" -gt 0 ]; then
    status=$(ct cat "/proc/$main_pid/status")
    field() { printf '%s\n' "$status" | awk -v f="$1:" '$1 == f { print $2 }'; }
    uid=$(field Uid)
    dicom_uid=$(ct id -u dicom)
    if [ "$(field CapEff)" = 0000000000000000 ] && [ "$(field CapPrm)" = 0000000000000000 ] \
        && [ "$(field CapBnd)" = 0000000000000000 ] && [ "$(field NoNewPrivs)" = 1 ] \
        && [ "$(field Seccomp)" = 2 ] && [ "$uid" = "$dicom_uid" ]; then
        pass "hardening: the daemon runs as dicom ($uid) with CapEff=CapPrm=CapBnd=0, NoNewPrivs=1, a seccomp filter"
    else
        fail "hardening: Uid $uid (dicom $dicom_uid) CapEff $(field CapEff) CapPrm $(field CapPrm) CapBnd $(field CapBnd) NoNewPrivs $(field NoNewPrivs) Seccomp $(field Seccomp)"
    fi
    # Writes from inside the service's mount namespace, as root there: a read-only mount
    # refuses even root; as the service's user: nothing outside its private /tmp.
    denied=() allowed=()
    for path in /etc/dcw-e2e /usr/local/bin/dcw-e2e /var/lib/dcw-e2e /var/log/dcw-e2e /home/site/dcw-e2e /root/dcw-e2e; do
        if ct nsenter --target "$main_pid" --mount -- touch "$path" 2> /dev/null; then
            allowed+=("$path(root)")
        else
            denied+=("$path")
        fi
        if in_sandbox "$main_pid" touch "$path" 2> /dev/null; then allowed+=("$path(dicom)"); fi
    done
    tmp_private=no
    if in_sandbox "$main_pid" sh -c 'touch /tmp/dcw-e2e-private' 2> /dev/null && ! ct test -e /tmp/dcw-e2e-private; then
        tmp_private=yes
    fi
    home_readable=no
    [ "$(in_sandbox "$main_pid" cat /home/site/marker 2> /dev/null)" = kept ] && home_readable=yes
    # shellcheck disable=SC2016 # awk's fields
    root_ro=$(ct awk '$5 == "/" { print $6 }' "/proc/$main_pid/mountinfo" | tail -n 1)
    if [ ${#allowed[@]} -eq 0 ] && [ "$tmp_private" = yes ] && [ "$home_readable" = yes ] && [[ $root_ro == ro* ]]; then
        pass "hardening: / is mounted $root_ro in the service's namespace; writes to ${denied[*]} refused (even to root there); /tmp is private; /home is readable (ProtectHome=read-only)"
    else
        fail "hardening: writable: ${allowed[*]:-none}; / mounted ${root_ro:-?}; private /tmp: $tmp_private; /home readable: $home_readable"
    fi
    # shellcheck disable=SC2016 # awk's fields
    core_limit=$(ct awk '/^Max core file size/ { print $5 "/" $6 }' "/proc/$main_pid/limits")
    if [ "$core_limit" = 0/0 ]; then
        pass "LimitCORE=0: core file size limit 0 (a watchdog SIGABRT leaves no core dump)"
    else
        fail "LimitCORE=0: core file size limit is $core_limit"
    fi
fi

# --- starting: activating until READY=1; no watchdog kill while it waits --------------------
# PostgreSQL that accepts connections and never answers (a listener on the host that never
# accepts them), a connect timeout of 70 s and a statement timeout of 60 s (so /healthz's
# liveness window is 162 s): the main loop waits 70 s at a time for its first batch and the
# daemon is not ready. With WatchdogSec=30 in a drop-in (shorter than that window) the unit must
# stay activating (not active, not killed by the watchdog: the start is TimeoutStartSec's
# business) well past WatchdogSec, and the daemon must warn that 30 s is too short.
ct systemctl stop "$UNIT"
blackhole_port=$(free_port) || die "no free port"
python3 - "$blackhole_port" << 'EOF' &
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
time.sleep(900)
EOF
blackhole_pid=$!
redis_cli XADD "$stream_key" '*' tenant_id e2e study_uid 1.2.826.0.1.3680043.10.1 event stored > /dev/null
printf '%s\n' "DCW__DATABASE__URL=postgres://root@127.0.0.1:$blackhole_port/$database" \
    DCW__DATABASE__CONNECT_TIMEOUT_MS=70000 DCW__DATABASE__STATEMENT_TIMEOUT_MS=60000 \
    DCW__STREAM__CLAIM_IDLE_MS=300000 \
    | ct sh -c "mkdir -p /run/dcw-e2e && cat > /run/dcw-e2e/slow-db.env"
test_dropin e2e-slow-db "[Service]
WatchdogSec=30
EnvironmentFile=/run/dcw-e2e/slow-db.env"
ct systemctl start --no-block "$UNIT"
listening() { [ "$(http_code healthz)" != 000 ]; }
wait_for 15 listening
first_pid=$(prop MainPID)
wait_secs=90
samples=() bad_samples=0
deadline=$((SECONDS + wait_secs))
while [ "$SECONDS" -lt "$deadline" ]; do
    sample="$(prop ActiveState)/$(prop SubState) pid=$(prop MainPID) readyz=$(http_code readyz) healthz=$(http_code healthz)"
    samples+=("$sample")
    [ "$sample" = "activating/start pid=$first_pid readyz=503 healthz=200" ] || bad_samples=$((bad_samples + 1))
    sleep 5
done
if [ "$bad_samples" -eq 0 ] && [ "${first_pid:-0}" -gt 0 ]; then
    pass "starting: while PostgreSQL does not answer, the unit stayed activating (start), not active, for ${wait_secs} s: /readyz 503, /healthz 200"
    pass "watchdog while starting: with WatchdogSec=30 and the main loop held up 70 s at a time, the daemon waiting for PostgreSQL was not killed in ${wait_secs} s (same MainPID, NRestarts=$(prop NRestarts)): no pings, so no watchdog, before READY=1"
else
    fail "starting / watchdog while starting: samples every 5 s: $(printf '%s; ' "${samples[@]}")"
    show_journal
fi
warning=$(journal | grep -m 1 'shorter than the liveness window' || true)
if [[ $warning == *WatchdogSec=30s* && $warning == *"(162s"* ]]; then
    pass "watchdog window: the daemon warned at start: ${warning#*WARN }"
else
    fail "watchdog window: no warning naming WatchdogSec=30s and the 162 s liveness window (got: ${warning:-nothing})"
fi
ct systemctl stop "$UNIT"
kill "$blackhole_pid" 2> /dev/null || true
test_dropin e2e-slow-db ""
t0=$SECONDS
ct systemctl start "$UNIT" || true
code=$(http_code readyz)
if [ "$(prop ActiveState)" = active ] && [ "$code" = 200 ]; then
    pass "READY=1: systemctl start returned after $((SECONDS - t0)) s with the unit active and /readyz already 200"
else
    fail "READY=1: after systemctl start the unit is $(prop ActiveState)/$(prop SubState), /readyz $code"
    show_journal
fi

# --- the series documents drop-in -----------------------------------------------------------
# Its roots missing (not mounted yet): the unit must not run without them, then must start
# by itself once they appear.
ct sh -c "mkdir -p $dropins && install -m 0644 /src/systemd/series-documents.conf $dropins/"
ct sed -i -e 's|^# *DCW__SERIES__DICOM_ROOT=|DCW__SERIES__DICOM_ROOT=|' \
    -e 's|^# *DCW__SERIES__JSON_ROOT=|DCW__SERIES__JSON_ROOT=|' "$env_file"
json_root=$(ct sed -n 's/^DCW__SERIES__JSON_ROOT=//p' "$env_file")
dicom_root=$(ct sed -n 's/^DCW__SERIES__DICOM_ROOT=//p' "$env_file")
ct systemctl daemon-reload
ct systemctl restart "$UNIT" 2> /dev/null || true
sleep 1
result="$(prop ActiveState)/$(prop SubState) $(prop Result) status=$(prop ExecMainStatus)"
requires=$(ct systemctl show --property=RequiresMountsFor --value "$UNIT")
if [[ $result != active/running* ]] && [[ $requires == *"$json_root"* ]] \
    && journal -n 30 | grep -q 'Failed to set up mount namespacing\|226/NAMESPACE\|No such file or directory'; then
    pass "series-documents.conf: without its JSON root ($json_root) the unit does not run ($result; RequiresMountsFor=$requires)"
else
    fail "series-documents.conf: with $json_root missing the unit is $result (RequiresMountsFor=$requires)"
    show_journal
fi
ct sh -c "install -d -m 0755 -o dicom -g dicom $(dirname "$json_root") $json_root $dicom_root"
if wait_for 40 unit_ready; then
    pass "series-documents.conf: once the roots exist the unit starts by itself (Restart=), /readyz 200"
else
    fail "series-documents.conf: roots created, the unit is $(prop ActiveState)/$(prop SubState)"
    show_journal
fi
main_pid=$(prop MainPID)
if [ "${main_pid:-0}" -gt 0 ] && in_sandbox "$main_pid" touch "$json_root/dcw-e2e-write" 2> /dev/null \
    && ! in_sandbox "$main_pid" touch "$dicom_root/dcw-e2e-write" 2> /dev/null \
    && ! in_sandbox "$main_pid" touch "$(dirname "$json_root")/dcw-e2e-write" 2> /dev/null; then
    pass "hardening: the daemon can write under the JSON root $json_root and nowhere beside it (not $dicom_root, not $(dirname "$json_root"))"
else
    fail "hardening: writes under $json_root / $dicom_root not as expected"
fi
ct rm -f "$json_root/dcw-e2e-write"
# Back to the base unit.
ct rm -f "$dropins/series-documents.conf"
ct sed -i -e 's|^DCW__SERIES__|# DCW__SERIES__|' "$env_file"
ct systemctl daemon-reload
ct systemctl restart "$UNIT" || true

# --- restart policy: a port clash at boot must not lock the unit out -------------------------
ct systemctl stop "$UNIT"
# systemd holds the port; its service (never started: nobody connects) must exist.
ct sh -c "cat > /run/systemd/system/dcw-e2e-squatter.socket" << EOF
[Socket]
ListenStream=127.0.0.1:$port
EOF
ct sh -c "cat > /run/systemd/system/dcw-e2e-squatter.service" << EOF
[Service]
ExecStart=/bin/sleep infinity
EOF
ct systemctl daemon-reload
ct systemctl start dcw-e2e-squatter.socket || fail "port clash: cannot hold 127.0.0.1:$port with a socket unit"
ct systemctl start --no-block "$UNIT"
# (a start by hand sets NRestarts back to 0)
restarts_before=$(prop NRestarts)
# More failed starts than the old StartLimitBurst=5 allowed in 300 s.
want=$((restarts_before + 6))
if wait_for $((8 * (restart_sec + 3))) restarted_at_least "$want"; then
    clash_state="$(prop ActiveState)/$(prop SubState) $(prop Result)"
    if journal -n 40 | grep -q 'cannot listen'; then
        pass "port clash: 127.0.0.1:$port taken, the daemon fails (\"cannot listen\") and is restarted again and again: $(($(prop NRestarts) - restarts_before)) restarts, no start-limit lock-out ($clash_state)"
    else
        fail "port clash: restarted, but the journal has no 'cannot listen'"
        show_journal
    fi
else
    fail "port clash: only $(($(prop NRestarts) - restarts_before)) restarts, unit $(prop ActiveState)/$(prop SubState) $(prop Result)"
    show_journal
fi
ct systemctl stop dcw-e2e-squatter.socket
if wait_for $((restart_sec * 4 + 15)) unit_ready; then
    pass "port clash: once the port is free the unit recovers by itself (no reset-failed), /readyz 200"
else
    fail "port clash: port freed, the unit is $(prop ActiveState)/$(prop SubState) $(prop Result)"
    show_journal
fi

# --- the watchdog: a frozen process is killed and restarted --------------------------------
frozen_pid=$(prop MainPID)
restarts_before=$(prop NRestarts)
if [ "${frozen_pid:-0}" -le 0 ]; then
    fail "watchdog: no main process to freeze (the unit is $(prop ActiveState)/$(prop SubState))"
else
    frozen_at=$(date +%s)
    ct sh -c "kill -STOP $frozen_pid"
    t0=$SECONDS
    if wait_for $((watchdog_sec + restart_sec + 30)) replaced "$frozen_pid"; then
        took=$((SECONDS - t0))
        if journal --since "@$frozen_at" | grep -q 'Watchdog timeout'; then
            pass "watchdog: a frozen daemon (SIGSTOP) was killed by the watchdog and restarted after ${took} s (WatchdogSec=${watchdog_sec}): MainPID $frozen_pid -> $(prop MainPID), NRestarts $restarts_before -> $(prop NRestarts)"
        else
            fail "watchdog: restarted after ${took} s but the journal shows no watchdog timeout"
            show_journal
        fi
    else
        fail "watchdog: the frozen daemon was not restarted within $((watchdog_sec + restart_sec + 30)) s: $(prop ActiveState)/$(prop SubState) MainPID $(prop MainPID)"
        ct sh -c "kill -CONT $frozen_pid" 2> /dev/null
        show_journal
    fi
fi
wait_for 20 unit_ready || true

# --- compat-pre-248.conf, on this systemd ----------------------------------------------------
# Passwords from a root-only environment file instead of credentials (empty here: none).
ct sh -c "install -m 0644 /src/systemd/compat-pre-248.conf $dropins/ && install -m 0600 /dev/null /etc/dicom-cache-warmer/credentials/passwords.env"
ct systemctl daemon-reload
ct systemctl restart "$UNIT" || true
main_pid=$(prop MainPID)
password_files=$(ct sh -c "tr '\\0' '\\n' < /proc/$main_pid/environ | grep -c '^DCW__.*PASSWORD_FILE=' || true")
credentials_dir=absent
ct test -e "/run/credentials/$UNIT.service" && credentials_dir=present
if unit_ready && [ "$password_files" = 0 ] && [ "$credentials_dir" = absent ]; then
    pass "compat-pre-248.conf: without LoadCredential= and the *_PASSWORD_FILE variables, passwords from the root-only environment file, the unit is active and ready (on systemd 252; no older systemd to boot here)"
else
    fail "compat-pre-248.conf: $(prop ActiveState)/$(prop SubState), /readyz $(http_code readyz), PASSWORD_FILE variables: $password_files, /run/credentials/$UNIT.service $credentials_dir"
    show_journal
fi
ct rm -f "$dropins/compat-pre-248.conf"
ct systemctl daemon-reload
ct systemctl restart "$UNIT" || true

# --- stop ------------------------------------------------------------------------------------
t0=$(date +%s%N)
stop_status=0
ct systemctl stop "$UNIT" || stop_status=$?
took_ms=$((($(date +%s%N) - t0) / 1000000))
result="$(prop Result) ExecMainStatus=$(prop ExecMainStatus) ExecMainCode=$(prop ExecMainCode)"
if [ "$stop_status" -eq 0 ] && [ "$took_ms" -lt $((stop_timeout * 1000)) ] \
    && [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ]; then
    pass "stop: systemctl stop exited 0 in ${took_ms} ms (TimeoutStopSec=${stop_timeout}), the daemon exited 0 ($result)"
else
    fail "stop: systemctl stop exited $stop_status in ${took_ms} ms; $result"
    show_journal
fi

# --- a bad configuration: exit 2, not restarted --------------------------------------------
printf 'DCW__STREAM__BATCH_SIZE=0\n' | ct sh -c "cat > /run/dcw-e2e/bad.env"
test_dropin e2e-bad-config "[Service]
EnvironmentFile=/run/dcw-e2e/bad.env"
ct systemctl start "$UNIT" 2> /dev/null
restarts_before=$(prop NRestarts)
sleep $((restart_sec + 5))
if [ "$(prop ExecMainStatus)" = 2 ] && [ "$(prop ActiveState)" = failed ] \
    && [ "$(prop NRestarts)" = "$restarts_before" ] && journal -n 20 | grep -q 'stream.batch_size'; then
    pass "bad configuration: the daemon exits 2 naming the key (stream.batch_size), and after $((restart_sec + 5)) s the unit is still failed, not restarted (RestartPreventExitStatus=2)"
else
    fail "bad configuration: ExecMainStatus=$(prop ExecMainStatus) $(prop ActiveState)/$(prop SubState) NRestarts $restarts_before -> $(prop NRestarts)"
    show_journal
fi
test_dropin e2e-bad-config ""

say "took $((SECONDS - START)) s in all"
printf '%s\n' "systemd-e2e: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
