#!/usr/bin/env bash
# Runs threatflow's whole test suite, after installing what the tests need.
# Usage: bash tests/run.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi

# cargo-nextest runs every test in its own process, in parallel, and reports slow tests.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest..." >&2
  cargo install cargo-nextest --locked
fi

# Real syslog receivers for tests/syslog_receivers.rs: rsyslog with its GnuTLS driver from
# Debian, and syslog-ng, whose Debian package conflicts with rsyslog's, unpacked under
# target/syslog-ng (with the libraries it needs installed). openssl makes their test
# certificates. The tests start and stop the receivers themselves, on loopback only.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
for package in rsyslog rsyslog-gnutls openssl libivykis0 libnet1 libpcre3 libwrap0; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}..." >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ ! -x target/syslog-ng/usr/sbin/syslog-ng ]; then
  echo "unpacking syslog-ng..." >&2
  download=$(mktemp -d)
  chmod 755 "$download"
  if ! (cd "$download" && apt-get download -q syslog-ng-core); then
    as_root apt-get update -q
    (cd "$download" && apt-get download -q syslog-ng-core)
  fi
  mkdir -p target/syslog-ng
  dpkg -x "$download"/syslog-ng-core_*.deb target/syslog-ng
  rm -rf "$download"
fi

# A real Kafka-protocol broker for tests/kafka.rs: tansu, built from crates.io once (about
# ten minutes on two cores) and skipped when this version is already installed. The tests
# start it in memory on loopback ports of their own.
tansu_version=0.6.0
if [ "$(tansu --version 2>/dev/null || "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" --version 2>/dev/null || true)" != "tansu $tansu_version" ]; then
  echo "installing tansu $tansu_version (a Kafka-protocol broker for the tests)..." >&2
  cargo install tansu --version "$tansu_version" --features dynostore --locked
fi

# The deployment tests render deploy/kubernetes with `kubectl kustomize` (Debian's
# kubernetes-client, unless a kubectl is already installed) and validate the result offline
# against the Kubernetes schemas with kubernetes-validate from PyPI (pinned).
if ! kubectl kustomize --help >/dev/null 2>&1; then
  echo "installing kubernetes-client (kubectl)..." >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kubernetes-client
fi
validate_version=1.37.0
if [ "$(python3 -m kubernetes_validate --version 2>/dev/null || true)" != "$validate_version" ]; then
  echo "installing kubernetes-validate $validate_version..." >&2
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$validate_version"
fi

# The tests start every other peer they talk to themselves too (the threatflow binary, the
# Kubernetes API double, feed servers), on loopback only.
exec cargo nextest run --locked --no-fail-fast "$@"
