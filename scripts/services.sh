#!/usr/bin/env bash
# Makes sure the Redis and PostgreSQL named by DCW__REDIS__URL and DCW__DATABASE__URL answer.
# When one does not and its host is this machine (127.0.0.1, localhost, ::1), starts a private
# instance on that port with its data under .dev/, installing redis-server or postgresql with
# apt-get first (through sudo when not root) when they are missing. Also installs pgbouncer
# when missing: the PgBouncer tests start private ones (and skip, saying so, without it).
#
#   source scripts/services.sh   # from another script: ensure the services, export the URLs
#   scripts/services.sh          # ensure the services and print the URLs (passwords hidden)
#   scripts/services.sh stop     # stop the private instances this script started
#
# Exports DCW__REDIS__URL, DCW__DATABASE__URL, DCW_TEST_REDIS_URL (the Redis URL) and
# DCW_TEST_DATABASE_URL (the same PostgreSQL server, database "postgres": the tests create and
# drop their own databases through it).
#
# Pure bash plus coreutils; redis-cli and pg_isready are used for a protocol-level check only
# when they are installed.

_dcw_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

_dcw_say() { printf '%s\n' "$*" >&2; }
_dcw_fail() {
    printf 'services.sh: %s\n' "$*" >&2
    return 1
}

# The URL with any password replaced by ***.
_dcw_redact() {
    local url=$1 rest authority
    if [[ $url != *://* ]]; then
        printf '%s' "$url"
        return 0
    fi
    rest=${url#*://}
    authority=${rest%%[/?#]*}
    if [[ $authority == *@* && ${authority%@*} == *:* ]]; then
        printf '%s://%s:***@%s%s' "${url%%://*}" "${authority%%:*}" "${authority##*@}" \
            "${rest:${#authority}}"
    else
        printf '%s' "$url"
    fi
}

_dcw_pct_decode() {
    local s=${1//\\/\\\\}
    printf '%b' "${s//%/\\x}"
}

# Splits URL (default port $2) into _dcw_u_{scheme,userinfo,user,pass,hostport,host,port,path,tail}.
# Like the WHATWG parser the daemon uses: the authority ends at the first / ? or #, and the
# credentials end at its last @.
_dcw_parse_url() {
    local url=$1 rest authority
    if [[ $url != *://* ]]; then
        _dcw_fail "not a URL: $(_dcw_redact "$url")"
        return 1
    fi
    _dcw_u_scheme=${url%%://*}
    rest=${url#*://}
    authority=${rest%%[/?#]*}
    rest=${rest:${#authority}}
    _dcw_u_path=${rest%%[?#]*}
    _dcw_u_tail=${rest:${#_dcw_u_path}}
    _dcw_u_userinfo='' _dcw_u_user='' _dcw_u_pass=''
    if [[ $authority == *@* ]]; then
        _dcw_u_userinfo=${authority%@*}
        authority=${authority##*@}
        _dcw_u_user=$(_dcw_pct_decode "${_dcw_u_userinfo%%:*}")
        if [[ $_dcw_u_userinfo == *:* ]]; then
            _dcw_u_pass=$(_dcw_pct_decode "${_dcw_u_userinfo#*:}")
        fi
    fi
    _dcw_u_hostport=$authority
    if [[ $authority == \[* ]]; then # [IPv6]:port
        _dcw_u_host=${authority%%]*}
        _dcw_u_host=${_dcw_u_host#\[}
        _dcw_u_port=${authority#*]}
    elif [[ $authority == *:* ]]; then
        _dcw_u_host=${authority%:*}
        _dcw_u_port=${authority##*:}
    else
        _dcw_u_host=$authority
        _dcw_u_port=''
    fi
    _dcw_u_port=${_dcw_u_port#:}
    _dcw_u_port=${_dcw_u_port:-$2}
    _dcw_u_host=${_dcw_u_host:-localhost}
    if [[ ! $_dcw_u_port =~ ^[0-9]+$ ]]; then
        _dcw_fail "bad port in $(_dcw_redact "$url")"
        return 1
    fi
}

_dcw_is_local() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

# The address a private instance listens on for host $1.
_dcw_bind_for() { if [[ $1 == ::1 ]]; then printf '::1'; else printf '127.0.0.1'; fi; }

# True when something accepts TCP connections on host $1 port $2.
_dcw_tcp_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Runs "$@" until it succeeds, $1 seconds have passed, or it sets _dcw_give_up.
_dcw_wait() {
    local deadline=$((SECONDS + $1))
    shift
    _dcw_give_up=''
    until "$@"; do
        if [[ -n $_dcw_give_up ]] || ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.25
    done
}

_dcw_as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
    else
        _dcw_fail "need root for: $*; run it as root or install sudo"
    fi
}

_dcw_apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        _dcw_fail "$* not installed and there is no apt-get: install $* yourself"
        return 1
    fi
    _dcw_say "installing $* with apt-get ..."
    if ! _dcw_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
        ! _dcw_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; then
        _dcw_fail "could not install $*"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------- redis

# Host $1 port $2 user $3 password $4 tls $5: true when Redis answers PING (when redis-cli is
# installed and the connection is not TLS; otherwise when the port accepts connections).
_dcw_redis_answers() {
    local -a args=(-h "$1" -p "$2")
    _dcw_reply='connection refused'
    _dcw_tcp_open "$1" "$2" || return 1
    _dcw_reply=''
    if [[ -n $5 ]] || ! command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    if [[ -n $3 ]]; then args+=(--user "$3"); fi
    # The password goes through the environment: not on a command line, and it can differ
    # from the URL's (DCW__REDIS__PASSWORD wins).
    if [[ -n $4 ]]; then
        _dcw_reply=$(REDISCLI_AUTH=$4 timeout 5 redis-cli "${args[@]}" ping 2>&1)
    else
        _dcw_reply=$(env -u REDISCLI_AUTH timeout 5 redis-cli "${args[@]}" ping 2>&1)
    fi
    _dcw_reply=${_dcw_reply//$'\n'/ }
    case $_dcw_reply in
    PONG) return 0 ;;
    *NOAUTH* | *WRONGPASS* | *AUTH*) _dcw_give_up=1 ;; # waiting will not help
    esac
    return 1
}

_dcw_redis_quote() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

# Starts a private redis-server: port $1 bind $2 user $3 password $4.
_dcw_start_redis() {
    local port=$1 bind=$2 user=$3 pass=$4 dir=$_dcw_repo/.dev/redis conf
    local -a args=()
    mkdir -p "$dir" || return 1
    if [[ -n $pass ]]; then
        conf=$dir/redis-$port.conf
        rm -f "$conf"
        (
            umask 077
            if [[ -n $user && $user != default ]]; then
                printf 'user %s on %s ~* &* +@all\n' "$(_dcw_redis_quote "$user")" \
                    "$(_dcw_redis_quote ">$pass")" >"$conf"
            else
                printf 'requirepass %s\n' "$(_dcw_redis_quote "$pass")" >"$conf"
            fi
        ) || return 1
        args+=("$conf")
    fi
    redis-server "${args[@]}" --port "$port" --bind "$bind" --daemonize yes --save "" \
        --appendonly no --dir "$dir" --logfile "$dir/redis-$port.log" \
        --pidfile "$dir/redis-$port.pid" >&2 || return 1
    if ! _dcw_wait 20 _dcw_redis_answers "$bind" "$port" "$user" "$pass" ""; then
        tail -n 5 "$dir/redis-$port.log" >&2 2>/dev/null
        _dcw_fail "the private redis-server on port $port did not answer within 20 s" \
            "(${_dcw_reply}); log: $dir/redis-$port.log"
        return 1
    fi
}

_dcw_ensure_redis() {
    local url=${DCW__REDIS__URL:-redis://127.0.0.1:6379} host port user pass tls='' shown how=''
    local dir=$_dcw_repo/.dev/redis pid=''
    _dcw_parse_url "$url" 6379 || return 1
    host=$_dcw_u_host port=$_dcw_u_port user=$_dcw_u_user
    pass=${DCW__REDIS__PASSWORD:-$_dcw_u_pass}
    if [[ $_dcw_u_scheme == rediss ]]; then tls=1; fi
    shown=$(_dcw_redact "$url")
    if _dcw_tcp_open "$host" "$port"; then
        if ! _dcw_wait 10 _dcw_redis_answers "$host" "$port" "$user" "$pass" "$tls"; then
            _dcw_fail "redis: $host:$port accepts connections but does not answer PING" \
                "(${_dcw_reply:-no reply}); check DCW__REDIS__URL / DCW__REDIS__PASSWORD"
            return 1
        fi
        how='already running'
        if [[ -f $dir/redis-$port.pid ]]; then pid=$(<"$dir/redis-$port.pid"); fi
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            how="already running: private instance in $dir"
        fi
    elif ! _dcw_is_local "$host"; then
        _dcw_fail "redis: cannot reach $shown ($host:$port); start it or set DCW__REDIS__URL"
        return 1
    else
        if ! command -v redis-server >/dev/null 2>&1; then
            _dcw_apt_install redis-server || return 1
            # The package starts a system service on 6379 where an init system runs.
            if _dcw_wait 5 _dcw_redis_answers "$host" "$port" "$user" "$pass" "$tls"; then
                how='started by the redis-server package just installed'
            fi
        fi
        if [[ -z $how ]]; then
            _dcw_start_redis "$port" "$(_dcw_bind_for "$host")" "$user" "$pass" || return 1
            how="started private instance in $dir"
        fi
    fi
    export DCW__REDIS__URL=$url DCW_TEST_REDIS_URL=$url
    _dcw_say "redis: using $shown ($how)"
}

# ------------------------------------------------------------------------------------- postgres

# Sets _dcw_pg_bin to a directory holding initdb and pg_ctl: version $1 when given and
# installed, else the newest in /usr/lib/postgresql, else the one initdb on PATH is in.
_dcw_find_pg_bin() {
    local f newest=''
    if [[ -n ${1:-} && -x /usr/lib/postgresql/$1/bin/initdb ]]; then
        _dcw_pg_bin=/usr/lib/postgresql/$1/bin
        return 0
    fi
    newest=$(for f in /usr/lib/postgresql/*/bin/initdb; do
        if [[ -x $f ]]; then printf '%s\n' "$f"; fi
    done | sort -V | tail -n 1)
    if [[ -z $newest ]] && f=$(command -v initdb 2>/dev/null); then
        newest=$(readlink -f "$f")
    fi
    [[ -n $newest && -x ${newest%/*}/pg_ctl ]] || return 1
    _dcw_pg_bin=${newest%/*}
}

# A PostgreSQL client program $1: on PATH, else the newest in /usr/lib/postgresql.
_dcw_pg_tool() {
    local f found=''
    if command -v "$1" 2>/dev/null; then return 0; fi
    for f in /usr/lib/postgresql/*/bin/"$1"; do
        if [[ -x $f ]]; then found=$f; fi
    done
    [[ -n $found ]] && printf '%s\n' "$found"
}

# Host $1 port $2: true when PostgreSQL accepts connections (pg_isready when installed,
# otherwise when the port accepts connections).
_dcw_pg_answers() {
    local isready
    _dcw_reply='connection refused'
    _dcw_tcp_open "$1" "$2" || return 1
    _dcw_reply=''
    isready=$(_dcw_pg_tool pg_isready) || return 0
    _dcw_reply=$("$isready" -h "$1" -p "$2" -t 3 2>&1)
}

# True when URL $1 logs in (psql never prompts for a password).
_dcw_pg_login() {
    local psql
    psql=$(_dcw_pg_tool psql) || return 1
    PGCONNECT_TIMEOUT=5 "$psql" -X -w -q -At -c 'select 1' "$1" >/dev/null 2>&1
}

# Runs "$@" as the owner of the private cluster: initdb and postgres refuse to run as root.
_dcw_as_pg() {
    if ((EUID == 0)); then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# The package just installed made a default cluster; when it holds port $1 but refuses our
# URL (Debian's default pg_hba asks for passwords over TCP), drop it: it is new and empty.
_dcw_drop_package_cluster() {
    local port=$1 ver name cport _rest
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    while read -r ver name cport _rest; do
        if [[ $cport == "$port" ]]; then
            _dcw_say "postgres: removing the cluster $ver/$name the postgresql package just" \
                "created on port $port (it does not accept this URL); a private cluster replaces it"
            _dcw_as_root pg_dropcluster --stop "$ver" "$name" >&2 || return 1
        fi
    done < <(pg_lsclusters -h 2>/dev/null)
}

# Creates (first time) and starts a private cluster: port $1 bind $2 login role $3.
# Sets _dcw_pg_dir.
_dcw_start_pg() {
    local port=$1 bind=$2 role=$3 owner dir why='' fresh='' out psql
    owner=$(id -un)
    mkdir -p "$_dcw_repo/.dev" || return 1
    dir=$_dcw_repo/.dev/pg
    if ((EUID == 0)); then
        if ! getent passwd postgres >/dev/null; then
            _dcw_say "postgres: creating the system user postgres (initdb refuses to run as root)"
            useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
                --shell /usr/sbin/nologin postgres || return 1
        fi
        owner=postgres
        if ! runuser -u postgres -- test -x "$_dcw_repo/.dev"; then
            why="the postgres user cannot enter $_dcw_repo"
        fi
    fi
    if [[ -z $why && $dir == *\'* ]]; then why="the path has a quote in it"; fi
    if [[ -z $why ]] && ((${#dir} + 16 > 107)); then why="the path is too long for a socket"; fi
    if [[ -n $why ]]; then
        dir=/tmp/dcw-dev-pg-$port
        _dcw_say "postgres: private cluster goes in $dir: $why"
    fi
    if [[ ! -e $dir ]]; then
        mkdir -m 700 "$dir" || return 1
        if ((EUID == 0)); then chown postgres: "$dir" || return 1; fi
        fresh=1
    fi
    if [[ -L $dir || ! -d $dir || $(stat -c %U "$dir") != "$owner" ]]; then
        _dcw_fail "postgres: $dir is not a directory owned by $owner; remove it"
        return 1
    fi
    if [[ -f $dir/PG_VERSION ]]; then
        _dcw_find_pg_bin "$(<"$dir/PG_VERSION")" || return 1
        # Still running on another port (the URL changed): restart it on this one.
        if [[ -f $dir/postmaster.pid ]] && _dcw_as_pg "$_dcw_pg_bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
            _dcw_say "postgres: restarting the private cluster in $dir on port $port"
            _dcw_as_pg "$_dcw_pg_bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || return 1
        fi
    else
        if [[ -z $fresh && -n $(ls -A "$dir") ]]; then
            _dcw_fail "postgres: $dir is not empty and holds no cluster; remove it"
            return 1
        fi
        _dcw_find_pg_bin || return 1
        _dcw_say "postgres: creating a private cluster in $dir ($_dcw_pg_bin/initdb)"
        if ! out=$(_dcw_as_pg "$_dcw_pg_bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 \
            --locale=C 2>&1); then
            printf '%s\n' "$out" >&2
            _dcw_fail "postgres: initdb failed"
            return 1
        fi
    fi
    if ! out=$(_dcw_as_pg "$_dcw_pg_bin/pg_ctl" -D "$dir" \
        -o "-p $port -k '$dir' -c listen_addresses='$bind'" -l "$dir/log" -w -t 30 start 2>&1); then
        printf '%s\n' "$out" >&2
        tail -n 5 "$dir/log" >&2 2>/dev/null
        _dcw_fail "postgres: the private cluster did not start; log: $dir/log"
        return 1
    fi
    if [[ $role != postgres ]]; then # the URL's user must exist: make it a superuser
        psql=$_dcw_pg_bin/psql
        printf '%s\n' "SELECT format('CREATE ROLE %I LOGIN SUPERUSER', :'role')" \
            "WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \\gexec" |
            "$psql" -X -w -q -h "$bind" -p "$port" -U postgres -d postgres \
                -v ON_ERROR_STOP=1 -v role="$role" >/dev/null || return 1
    fi
    _dcw_pg_dir=$dir
}

# Sets _dcw_pg_dir to the private cluster listening on port $1, if any.
_dcw_private_pg_on() {
    local d
    local -a lines
    _dcw_pg_dir=''
    for d in "$_dcw_repo/.dev/pg" "/tmp/dcw-dev-pg-$1"; do
        if mapfile -t -n 4 lines 2>/dev/null <"$d/postmaster.pid" && [[ ${lines[3]:-} == "$1" ]]; then
            _dcw_pg_dir=$d
            return 0
        fi
    done
    return 1
}

_dcw_ensure_postgres() {
    local url=${DCW__DATABASE__URL:-postgres://postgres@127.0.0.1:5432/dicom}
    local host port role admin shown how='' installed=''
    _dcw_parse_url "$url" 5432 || return 1
    host=$_dcw_u_host port=$_dcw_u_port
    role=${_dcw_u_user:-${PGUSER:-$(id -un)}}
    admin="$_dcw_u_scheme://${_dcw_u_userinfo:+$_dcw_u_userinfo@}$_dcw_u_hostport/postgres$_dcw_u_tail"
    shown=$(_dcw_redact "$url")
    if _dcw_tcp_open "$host" "$port"; then
        if ! _dcw_wait 10 _dcw_pg_answers "$host" "$port"; then
            _dcw_fail "postgres: $host:$port accepts connections but is not ready" \
                "(${_dcw_reply:-no reply}); check DCW__DATABASE__URL"
            return 1
        fi
        how='already running'
        if _dcw_private_pg_on "$port"; then how="already running: private cluster in $_dcw_pg_dir"; fi
    elif ! _dcw_is_local "$host"; then
        _dcw_fail "postgres: cannot reach $shown ($host:$port); start it or set DCW__DATABASE__URL"
        return 1
    else
        if ! _dcw_find_pg_bin; then
            _dcw_apt_install postgresql || return 1
            installed=1
            if ! _dcw_find_pg_bin; then
                _dcw_fail "postgres: installed postgresql but found no initdb"
                return 1
            fi
        fi
        if [[ -n $installed ]] && _dcw_wait 5 _dcw_pg_answers "$host" "$port"; then
            if _dcw_pg_login "$admin"; then
                how='started by the postgresql package just installed'
            else
                _dcw_drop_package_cluster "$port" || return 1
            fi
        fi
        if [[ -z $how ]]; then
            _dcw_start_pg "$port" "$(_dcw_bind_for "$host")" "$role" || return 1
            how="started private cluster in $_dcw_pg_dir"
        fi
    fi
    export DCW__DATABASE__URL=$url DCW_TEST_DATABASE_URL=$admin
    _dcw_say "postgres: using $shown ($how)"
}

# ------------------------------------------------------------------------------------ pgbouncer

# The tests start their own pgbouncer processes; only the program is needed. Debian's package
# also enables a system service on 127.0.0.1:6432 where systemd runs; the tests do not use it.
# A failed install is not fatal: those tests then skip and say why.
_dcw_ensure_pgbouncer() {
    local how='installed'
    if ! command -v pgbouncer >/dev/null 2>&1 && [[ ! -x /usr/sbin/pgbouncer ]]; then
        if ! _dcw_apt_install pgbouncer; then
            _dcw_say "pgbouncer: not installed; the PgBouncer tests will skip"
            return 0
        fi
        how='just installed'
    fi
    _dcw_say "pgbouncer: $how, for the PgBouncer tests"
}

# ----------------------------------------------------------------------------------------- stop

_dcw_stop() {
    local f pid d deadline
    for f in "$_dcw_repo"/.dev/redis/redis-*.pid; do
        [[ -f $f ]] || continue
        pid=$(<"$f")
        if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server* ]]; then
            kill "$pid" || return 1
            deadline=$((SECONDS + 10))
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.25; done
            _dcw_say "redis: stopped the private instance (pid $pid, $f)"
        fi
        rm -f "$f"
    done
    for d in "$_dcw_repo/.dev/pg" /tmp/dcw-dev-pg-*; do
        [[ -f $d/PG_VERSION && -f $d/postmaster.pid ]] || continue
        _dcw_find_pg_bin "$(<"$d/PG_VERSION")" || return 1
        _dcw_as_pg "$_dcw_pg_bin/pg_ctl" -D "$d" -m fast -w stop >/dev/null || return 1
        _dcw_say "postgres: stopped the private cluster in $d"
    done
}

_dcw_services_main() {
    _dcw_ensure_redis && _dcw_ensure_postgres && _dcw_ensure_pgbouncer
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    case ${1:-} in
    '')
        _dcw_services_main || exit 1
        for _dcw_var in DCW__REDIS__URL DCW__DATABASE__URL DCW_TEST_REDIS_URL DCW_TEST_DATABASE_URL; do
            printf '%s=%s\n' "$_dcw_var" "$(_dcw_redact "${!_dcw_var}")"
        done
        ;;
    stop) _dcw_stop || exit 1 ;;
    *)
        printf 'usage: %s [stop]\n' "$0" >&2
        exit 2
        ;;
    esac
else
    _dcw_services_main || return 1
fi
