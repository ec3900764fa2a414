#!/bin/sh
# Install php-fpm for the FastCGI integration tests (tests/test_fastcgi.py).
# Idempotent: does nothing when a php-fpm binary is already present.
set -eu

for bin in /usr/sbin/php-fpm*; do
    if [ -x "$bin" ]; then
        echo "php-fpm already installed: $bin"
        exit 0
    fi
done

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends php-fpm; then
    # A stale or missing package list is the usual cause; refresh once and retry.
    apt-get update
    apt-get install -y --no-install-recommends php-fpm
fi

ls /usr/sbin/php-fpm*
