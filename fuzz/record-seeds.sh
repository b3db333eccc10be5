#!/usr/bin/env bash
# Records the wire seed corpora (fuzz/corpus/{pgwire,mywire,resp}_server/)
# from real throwaway PostgreSQL 15, MariaDB 10.11 and Redis 7 servers
# (Debian packages postgresql, mariadb-server, redis-server), running the
# same sessions the fuzz targets run (fuzz/sessions). Run from anywhere, as
# root; the servers live in a temporary directory and are stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/quiesce-seeds.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/pg/data/postmaster.pid" ] && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
    sleep 1
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --quiet --manifest-path "$here/Cargo.toml" -p wire-record
rec="${CARGO_TARGET_DIR:-$here/target}/debug/wire-record"
out="$here/corpus"

# PostgreSQL: SCRAM-SHA-256, password "secret".
mkdir -p "$work/pg" && chown postgres: "$work/pg"
echo secret > "$work/pg/pw" && chown postgres "$work/pg/pw"
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$work/pg/data" -A scram-sha-256 --pwfile="$work/pg/pw" -U postgres >/dev/null
pg_port=$(free_port)
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg/data" \
    -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c wal_level=replica" -l "$work/pg/log" -w start >/dev/null
"$rec" postgres "127.0.0.1:$pg_port" postgres "$out/pgwire_server/pg15-session"

# MariaDB: root by unix_socket (an auth switch from mysql_native_password).
mkdir -p "$work/my"
mariadb-install-db --datadir="$work/my/data" --user=root --auth-root-authentication-method=socket >/dev/null 2>&1
my_port=$(free_port)
setsid mariadbd --no-defaults --datadir="$work/my/data" --socket="$work/my/sock" --port="$my_port" --bind-address=127.0.0.1 \
    --user=root --log-bin="$work/my/data/binlog" --pid-file="$work/my/pid" --tmpdir="$work/my" >"$work/my/log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/my/sock" ] && break; sleep 0.2; done
"$rec" mariadb "$work/my/sock" root "$out/mywire_server/mariadb1011-session"

# Redis: requirepass "secret", AOF on.
mkdir -p "$work/redis"
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes --requirepass secret \
    --daemonize no >"$work/redis/log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" -a secret --no-auth-warning ping >/dev/null 2>&1 && break; sleep 0.1; done
"$rec" redis "127.0.0.1:$redis_port" default "$out/resp_server/redis7-session"
