#!/usr/bin/env bash
# deploy/local/cluster.sh - the local cluster of DESIGN.md on this machine:
# a private PostgreSQL under var/ (run as the postgres user when we are root:
# PostgreSQL refuses root), two blob store nodes, one router; later dnsd and
# the front-end join here. Ports are DESIGN.md's local defaults.
#
#   cluster.sh up      start in the background (a second `up` says it runs)
#   cluster.sh run     start in the foreground; Ctrl-C stops everything
#   cluster.sh down    stop everything (SIGTERM: graceful drain)
#   cluster.sh status  what runs, with its ports
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${MAIL_BUILD:-$ROOT/build}
VAR=${MAIL_VAR:-$ROOT/var}
PGBIN=/usr/lib/postgresql/15/bin
PGPORT=${MAIL_PG_PORT:-55432}
PGDATA=$VAR/pg
# Unix socket paths are limited to ~107 bytes: fall back to /tmp for deep checkouts
PGSOCK=$VAR/pgsock
if [ ${#PGSOCK} -gt 80 ]; then PGSOCK=/tmp/mail-pgsock-$(echo "$VAR" | sha1sum | cut -c1-8); fi
LOG=$VAR/log
RUN=$VAR/run

# name | binary | args (the order is the start order; down goes in reverse)
services() {
	cat <<EOS
store1|store/mail-store|--listen=127.0.0.1:7201 --metrics-listen=127.0.0.1:9201 --data-dir=$VAR/store1
store2|store/mail-store|--listen=127.0.0.1:7202 --metrics-listen=127.0.0.1:9202 --data-dir=$VAR/store2
router|router/mail-router|--listen=127.0.0.1:7100 --metrics-listen=127.0.0.1:9100 --admin-listen=127.0.0.1:8080 --admin-token-file=$VAR/admin.token --store-nodes=store1=127.0.0.1:7201,store2=127.0.0.1:7202
EOS
}

say() { printf 'cluster: %s\n' "$*"; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

pg_up() {
	mkdir -p "$VAR" "$PGSOCK" "$LOG" "$RUN"
	if [ "$(id -u)" = 0 ]; then chown postgres: "$PGSOCK"; fi
	if [ ! -f "$PGDATA/PG_VERSION" ]; then
		say "initialising PostgreSQL in $PGDATA"
		mkdir -p "$PGDATA"
		if [ "$(id -u)" = 0 ]; then chown postgres: "$PGDATA"; chmod 700 "$PGDATA"; fi
		as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$LOG/initdb.log" 2>&1
		cat >>"$PGDATA/postgresql.conf" <<EOC
listen_addresses = ''
unix_socket_directories = '$PGSOCK'
port = $PGPORT
EOC
	fi
	if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
		touch "$LOG/postgres.log"
		if [ "$(id -u)" = 0 ]; then chown postgres: "$LOG/postgres.log"; fi
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOG/postgres.log" -w start >/dev/null
	fi
	if ! "$PGBIN/psql" -X -h "$PGSOCK" -p "$PGPORT" -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname='mail'" postgres | grep -q 1; then
		"$PGBIN/psql" -X -q -h "$PGSOCK" -p "$PGPORT" -U postgres -c "CREATE DATABASE mail" postgres
	fi
	say "postgres   $PGSOCK port $PGPORT (database mail)"
}

start_one() { # name bin args...
	local name=$1 bin=$2; shift 2
	"$BUILD/$bin" "$@" >>"$LOG/$name.log" 2>&1 </dev/null &
	echo $! >"$RUN/$name.pid"
}

wait_ready() { # name metrics-port
	local i
	for i in $(seq 1 100); do
		if curl -fsS "http://127.0.0.1:$2/healthz" >/dev/null 2>&1; then return 0; fi
		if ! alive "$1"; then say "$1 failed to start; its log:"; tail -20 "$LOG/$1.log" >&2; return 1; fi
		sleep 0.1
	done
	say "$1 did not answer on :$2"; return 1
}

up() {
	for b in store/mail-store router/mail-router; do
		[ -x "$BUILD/$b" ] || { say "$BUILD/$b is not built (make build)"; exit 1; }
	done
	if alive router || alive store1; then
		say "already running (make down stops it)"; status; exit 0
	fi
	pg_up
	# the router reads its connection string from the environment (MAIL_DB)
	export MAIL_DB="host=$PGSOCK port=$PGPORT dbname=mail user=postgres"
	local name bin args port
	while IFS='|' read -r name bin args; do
		read -r -a argv <<<"$args"
		start_one "$name" "$bin" "${argv[@]}"
		port=$(printf '%s\n' "${argv[@]}" | sed -n 's/^--metrics-listen=127.0.0.1://p')
		wait_ready "$name" "$port"
		say "$(printf '%-10s' "$name") pid $(cat "$RUN/$name.pid")  $(printf '%s ' "${argv[@]}" | grep -o -- '--[a-z-]*listen=[^ ]*' | tr '\n' ' ')"
	done < <(services)
	say "admin API  http://127.0.0.1:8080/api/v1/  token in $VAR/admin.token"
	say "logs in $LOG; stop with: make down"
}

down() {
	local name
	for name in $(services | cut -d'|' -f1 | tac); do
		if alive "$name"; then
			kill -TERM "$(cat "$RUN/$name.pid")" 2>/dev/null || true
			for _ in $(seq 1 100); do alive "$name" || break; sleep 0.1; done
			alive "$name" && kill -KILL "$(cat "$RUN/$name.pid")" 2>/dev/null || true
			say "stopped $name"
		fi
		rm -f "$RUN/$name.pid"
	done
	if [ -f "$PGDATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null && say "stopped postgres"
	fi
}

status() {
	local name
	for name in $(services | cut -d'|' -f1); do
		if alive "$name"; then say "$name running (pid $(cat "$RUN/$name.pid"))"; else say "$name stopped"; fi
	done
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
run)
	up
	trap 'echo; down; exit 0' INT TERM
	say "running in the foreground; Ctrl-C stops the cluster"
	while alive router; do sleep 1; done
	say "the router exited; stopping the rest"; down; exit 1 ;;
*) echo "usage: $0 up|run|down|status" >&2; exit 2 ;;
esac
