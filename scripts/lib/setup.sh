# Sourced by scripts/test and scripts/dev: installs what they need on a fresh machine of kind
# rust-svc (Debian with rustup, Python 3 and pip, Redis and PostgreSQL running) and does
# nothing for what is already there, so a second run costs a second.
#
#   need_build_tools    cmake, make, pkg-config and libssl-dev (rdkafka's bundled librdkafka
#                       and native-tls build against them)
#   need_test_tools     the above, plus redis-server (tests start private ones), kcat, the
#                       Python oracles (fastavro, phonenumbers), confluent-kafka for the
#                       examples, and cargo-nextest
#   start_tansu_install builds tansu with its SQLite engine in the background if missing
#                       (about 14 minutes on 2 cores: it builds beside the workspace)
#   wait_tansu_install  waits for it; fails with the end of its log
#   ensure_services     starts the machine's Redis and PostgreSQL if they are down

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; return 1
  fi
}

apt_install_missing() {
  local missing=()
  for want in "$@"; do
    local cmd=${want%%:*} pkg=${want#*:}
    if [ "$cmd" = "-" ]; then
      dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    else
      command -v "$cmd" >/dev/null || missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

need_build_tools() {
  apt_install_missing cmake:cmake make:make pkg-config:pkg-config -:libssl-dev
}

need_test_tools() {
  need_build_tools
  # The deduper tests start a private redis-server to play a Redis outage.
  apt_install_missing redis-server:redis-server kcat:kcat
  # Python oracles for fixtures and the fingerprint test; confluent-kafka for the producers'
  # and readers' examples (examples/python, run by tests/examples.rs).
  if ! python3 -c 'import fastavro, phonenumbers, confluent_kafka' 2>/dev/null; then
    echo "setup: installing fastavro phonenumbers confluent-kafka (pip)" >&2
    python3 -m pip install -q fastavro phonenumbers confluent-kafka
  fi
  if ! command -v cargo-nextest >/dev/null; then
    echo "setup: installing cargo-nextest (cargo install)" >&2
    cargo install --locked cargo-nextest
  fi
}

# The reliability suite runs against tansu as well as the mock broker (DESIGN §9), on its
# SQLite storage engine (feature libsql; its memory engine loses records fetched from inside
# a batch).
tansu_has_sqlite() {
  command -v tansu >/dev/null && python3 - <<'PY' 2>/dev/null
import json, os, sys
d = json.load(open(os.path.join(os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo")), ".crates2.json")))
sys.exit(0 if any(k.startswith("tansu ") and "libsql" in v.get("features", []) for k, v in d["installs"].items()) else 1)
PY
}

TANSU_INSTALL_PID=
TANSU_INSTALL_LOG=${TMPDIR:-/tmp}/tansu-install.log
start_tansu_install() {
  if ! tansu_has_sqlite; then
    echo "setup: building tansu with its SQLite engine in the background (log: $TANSU_INSTALL_LOG)" >&2
    cargo install --locked --force tansu --features libsql > "$TANSU_INSTALL_LOG" 2>&1 &
    TANSU_INSTALL_PID=$!
  fi
}

wait_tansu_install() {
  if [ -n "$TANSU_INSTALL_PID" ]; then
    wait "$TANSU_INSTALL_PID" || { tail -50 "$TANSU_INSTALL_LOG" >&2; echo "setup: tansu did not build" >&2; return 1; }
    TANSU_INSTALL_PID=
  fi
}

# The machine starts these before a session and before CI; start them again if they are down.
ensure_services() {
  if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    echo "setup: starting Redis on 127.0.0.1:6379" >&2
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/crm-sync.log
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
    echo "setup: starting PostgreSQL on 127.0.0.1:5432" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  fi
}
