#!/usr/bin/env bash
# Peak memory of `pglive migrate` applying a backlog of updates while one
# target table is locked, so apply falls behind the stream: the reader must
# stop reading (StreamOptions::max_buffered_bytes) instead of holding the
# backlog in memory.
#
#   scripts/backlog-memory.sh [UPDATES] [LOCK_SECONDS]    (defaults 3000000 45)
#
# Uses PostgreSQL from $PG_BINDIR (default Debian's 15) and the release
# binary (cargo build --release first). Prints the backlog's WAL and the
# peak RSS (VmHWM).
set -euo pipefail
BIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PGLIVE=${PGLIVE:-$(cd "$(dirname "$0")/.." && pwd)/target/release/pglive}
UPDATES=${1:-3000000}
LOCK=${2:-45}
root=$(mktemp -d /tmp/pglive-backlog.XXXXXX)
as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$root"
cleanup() {
  for side in source target; do as_postgres "$BIN/pg_ctl -D $root/$side -m immediate stop" >/dev/null 2>&1 || true; done
  rm -rf "$root"
}
trap cleanup EXIT
for side in source target; do
  as_postgres "$BIN/initdb -D $root/$side -A trust -U postgres --no-sync" >/dev/null
done
as_postgres "$BIN/pg_ctl -D $root/source -l $root/source.log -o \"-p 5711 -k $root -c listen_addresses='' -c wal_level=logical -c max_wal_size=8GB -c fsync=off -c synchronous_commit=off\" -w start" >/dev/null
as_postgres "$BIN/pg_ctl -D $root/target -l $root/target.log -o \"-p 5712 -k $root -c listen_addresses='' -c fsync=off -c synchronous_commit=off\" -w start" >/dev/null
S="host=$root port=5711 user=postgres dbname=postgres"
T="host=$root port=5712 user=postgres dbname=postgres"
psql() { "$BIN/psql" -X -q -At "$@"; }
psql "$S" -c "CREATE TABLE t (id int PRIMARY KEY, n int, pad text);
              INSERT INTO t SELECT g, 0, repeat('x', 100) FROM generate_series(1, 1000000) g"
stage() { "$PGLIVE" status --target "$T" --name m --json 2>/dev/null | sed -n 's/.*"stage": "\([a-z-]*\)".*/\1/p'; }
"$PGLIVE" migrate --source "$S" --target "$T" --name m >"$root/first.log" 2>&1 &
pid=$!
until [ "$(stage)" = streaming ]; do sleep 0.5; done
kill -INT "$pid"; wait "$pid" || true
# The backlog: UPDATES updates, 1,000 per transaction.
psql "$S" -c "DO \$\$ BEGIN FOR i IN 0..($UPDATES / 1000 - 1) LOOP
                UPDATE t SET n = n + 1 WHERE id > (i * 1000) % 1000000 AND id <= (i * 1000) % 1000000 + 1000;
                COMMIT; END LOOP; END \$\$"
backlog=$(psql "$S" -c "SELECT pg_size_pretty(pg_current_wal_lsn() - confirmed_flush_lsn) FROM pg_replication_slots")
# Apply falls behind: the table is locked while migrate resumes.
psql "$T" -c "BEGIN; LOCK TABLE t; SELECT pg_sleep($LOCK); COMMIT" >/dev/null &
sleep 1
started=$(date +%s)
"$PGLIVE" migrate --source "$S" --target "$T" --name m --cutover-when-ready >"$root/second.log" 2>&1 &
pid=$!
peak=0
while kill -0 "$pid" 2>/dev/null; do
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  [ "${hwm:-0}" -gt "$peak" ] && peak=$hwm
  sleep 0.2
done
wait "$pid"
echo "backlog: $UPDATES updates, $backlog of WAL; target table locked ${LOCK}s"
echo "pglive applied it and cut over in $(( $(date +%s) - started ))s; peak RSS $(( peak / 1024 )) MiB"
