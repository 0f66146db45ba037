#!/bin/sh
# Makes the compose secrets in deploy/secrets/ (git-ignored); files that exist are kept.
#   redis_password            Redis --requirepass, read by the workers
#   metrics_password          Prometheus' password for the workers' metrics port
#   web-config.yml            the workers' web config: user `prometheus` with the bcrypt hash
#                             of metrics_password (emotion-stream web hash-password)
#   grafana_admin_password    Grafana's admin password (user admin)
# Run from the repository root after `docker compose build` (the hash is made with the
# emotion-stream image unless an `emotion-stream` command is on PATH).
# The folder is 0700 (only you on this host); the files are 0644 because the containers
# read them as their own users (Docker bind-mounts compose secrets without changing them).
set -eu
dir="${1:-deploy/secrets}"
image="${IMAGE:-emotion-stream:cpu}"
mkdir -p "$dir"
chmod 0700 "$dir"

random_file() {
  if [ ! -s "$dir/$1" ]; then
    (umask 022 && openssl rand -hex 24 > "$dir/$1")
    echo "made $dir/$1"
  fi
}

hash_of() {
  if command -v emotion-stream >/dev/null 2>&1; then
    emotion-stream -q web hash-password < "$1"
  else
    docker run --rm -i --entrypoint emotion-stream "$image" -q web hash-password < "$1"
  fi
}

random_file redis_password
random_file metrics_password
random_file grafana_admin_password
if [ ! -s "$dir/web-config.yml" ]; then
  hashed="$(hash_of "$dir/metrics_password")"
  (umask 022 && printf 'basic_auth_users:\n  prometheus: %s\n' "$hashed" > "$dir/web-config.yml")
  echo "made $dir/web-config.yml"
fi
