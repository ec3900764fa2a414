#!/usr/bin/env bash
# Start what the tests talk to, installing what is missing: MariaDB and
# PostgreSQL (normally already running here), php-fpm and nginx (Debian packages).
# Idempotent; safe to run before every test run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

say() { echo "services: $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}

if ! port_open 3306; then
  say "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_port 3306 || { say "MariaDB did not come up on 127.0.0.1:3306"; exit 1; }
fi
if ! port_open 5432; then
  say "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  wait_port 5432 || { say "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
fi

missing=()
compgen -G "/usr/sbin/php-fpm*" >/dev/null || missing+=(php-fpm)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
say "MariaDB, PostgreSQL, php-fpm and nginx ready"
