#!/bin/sh
set -eu
REDISCLI_AUTH="$(cat "${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}")" redis-cli ping | grep -q PONG
