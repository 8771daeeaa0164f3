#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on loopback for the tests and print its URL.
# Usage: .ci/postgres.sh [PORT]   (default 55432). Needs the Debian postgresql package; runs the server as `postgres`.
set -euo pipefail
port=${1:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
dir=/tmp/ctnode-pg-$port
if ! runuser -u postgres -- "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
  rm -rf "$dir"
  install -d -o postgres -g postgres "$dir"
  runuser -u postgres -- "$bin/initdb" -D "$dir" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
    -o "-h 127.0.0.1 -p $port -k /tmp -c fsync=on -c max_connections=200" start >/dev/null
fi
echo "postgresql://postgres@127.0.0.1:$port/postgres"
