#!/usr/bin/env bash
# Installs the distribution packages the test suite drives for real: Redis and
# PostgreSQL servers (started by the tests when none is running), headless
# Chromium for the dashboard tests, Prometheus for the metrics tests,
# HAProxy for the load balancer's configuration and the multi-host test, and
# iproute2 for that test's hosts (network namespaces), and wrk for make bench.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# HAProxy: tests/deploy checks deploy/haproxy/haproxy.cfg with `haproxy -c`.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# wrk: make bench's HTTP comparison drives every server with it.
command -v wrk >/dev/null 2>&1 || need+=(wrk)
need=($(printf "%s\n" "${need[@]}" | sort -u))

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "Missing system packages: ${need[*]}. Install them with your package manager (root needed)." >&2
    exit 1
fi
echo "Installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Installing a server package must not start it as a service here: the tests
# start their own throwaway servers when none is reachable.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
