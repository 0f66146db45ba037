#!/bin/sh
# Start redis-server with the password read from the secret file (never from the repo).
set -eu
PW_FILE="${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}"
if [ ! -s "$PW_FILE" ]; then
  echo "redis: password file $PW_FILE is missing or empty: create deploy/secrets/redis_password (see deploy/README.md)" >&2
  exit 1
fi
exec redis-server /usr/local/etc/redis/redis.conf --requirepass "$(cat "$PW_FILE")"
