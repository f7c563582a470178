#!/usr/bin/env bash
# What `make test` needs beyond Python: the Debian packages (installed when run as root) and PostgreSQL,
# MariaDB and Redis on loopback (started when they are down). Idempotent: quiet when all is in place.
set -euo pipefail

PACKAGES=(tinyproxy chromium chromium-driver libmariadb-dev pkg-config gcc)

# Wait until `check` succeeds (up to 60 s), or fail naming the server.
wait_for() {
    local name=$1
    shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "$name did not answer within 60 s" >&2
    exit 1
}

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if ((EUID != 0)); then
        echo "missing Debian packages; as root run: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
if ! mariadb-admin --host=127.0.0.1 --user=root ping >/dev/null 2>&1; then
    echo "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
wait_for MariaDB mariadb-admin --host=127.0.0.1 --user=root ping
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
echo "machine ready: ${PACKAGES[*]} installed; PostgreSQL, MariaDB and Redis answer"
