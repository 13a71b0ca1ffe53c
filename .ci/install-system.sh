#!/usr/bin/env bash
# Install the Debian 12 system packages that CI needs.
#
#   .ci/install-system.sh [EXTRA_APT_PACKAGE...]
#
# - etcd-server, etcd-client (etcd 3.4): the tests start their own etcd; the packaged service is kept from
#   starting during the install (policy-rc.d) and, when this run installed it, disabled, so nothing is left
#   listening on 127.0.0.1:2379.
# - perf_analyzer's runtime libraries (see .ci/install-perf-analyzer.sh): libb64-0d, libssl3, zlib1g,
#   libstdc++6, libgcc-s1. libcudart.so.12 comes from PyPI (nvidia-cuda-runtime-cu12), not from apt.
#
# Idempotent: when every package is already installed it runs no apt command at all (well under a second).
# Runs as root, or through sudo when that exists.
set -euo pipefail

PACKAGES=(
  etcd-server etcd-client
  libb64-0d libssl3 zlib1g libstdc++6 libgcc-s1
  prometheus  # promtool: the alert rules are unit-tested with it
  protobuf-compiler protobuf-compiler-grpc protoc-gen-go protoc-gen-go-grpc  # clients/README stub-generation checks
  chromium chromium-driver  # tests/console: the web console in a real headless browser (Selenium)
  "$@"
)
POLICY_RC=/usr/sbin/policy-rc.d

log() { printf '[install-system] %s\n' "$*" >&2; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    log "must run as root (or with sudo available)"
    exit 1
  fi
fi

# Prints "name=version" for each installed package of the arguments, one a line.
installed_versions() {
  dpkg-query -W -f='${binary:Package}=${Version} ${db:Status-Status}\n' "$@" 2>/dev/null |
    awk '$2 == "installed" { sub(/:amd64=/, "="); print $1 }' | sort || true
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done

etcd_was_installed=0
[[ $(dpkg-query -W -f='${db:Status-Status}' etcd-server 2>/dev/null || true) == installed ]] && etcd_was_installed=1

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ ${#missing[@]} -eq 0 ]]; then
  log "already installed: ${PACKAGES[*]}"
else
  log "installing: ${missing[*]}"
  before=$(dpkg-query -W -f='${binary:Package}=${Version} ${db:Status-Status}\n' 2>/dev/null |
    awk '$2 == "installed" { print $1 }' | sort)

  # Keep maintainer scripts from starting etcd (the init script / systemd unit) during the install.
  # A policy-rc.d that is already there (Docker images ship one that denies everything) is left alone.
  own_policy=0
  if [[ ! -e $POLICY_RC ]]; then
    own_policy=1
    # shellcheck disable=SC2016  # $1 is for the policy script, not for this shell
    printf '#!/bin/sh\n# temporary, written by LMaaS .ci/install-system.sh\n[ "$1" = etcd ] && exit 101\nexit 0\n' |
      "${SUDO[@]}" tee "$POLICY_RC" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY_RC"
    trap '"${SUDO[@]}" rm -f "$POLICY_RC"' EXIT
  fi

  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes \
    apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null

  if [[ $own_policy -eq 1 ]]; then
    "${SUDO[@]}" rm -f "$POLICY_RC"
    trap - EXIT
  fi

  after=$(dpkg-query -W -f='${binary:Package}=${Version} ${db:Status-Status}\n' 2>/dev/null |
    awk '$2 == "installed" { print $1 }' | sort)
  log "newly installed packages (with dependencies):"
  comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | sed 's/^/  /' >&2
fi

# The package's service must not run: the tests own port 2379. Only touch a service this run installed,
# so a developer's own etcd service is never stopped.
if [[ $etcd_was_installed -eq 0 ]]; then
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    "${SUDO[@]}" systemctl disable --now etcd.service >/dev/null 2>&1 || true
  else
    "${SUDO[@]}" /etc/init.d/etcd stop >/dev/null 2>&1 || true
    "${SUDO[@]}" update-rc.d etcd disable >/dev/null 2>&1 || true
  fi
fi
if port_open 2379; then
  if [[ $etcd_was_installed -eq 0 ]]; then
    log "ERROR: something listens on 127.0.0.1:2379 after installing etcd"
    exit 1
  fi
  log "WARNING: something already listens on 127.0.0.1:2379 (not started by this script)"
fi

log "versions:"
installed_versions "${PACKAGES[@]}" | sed 's/^/  /' >&2
log "etcd: $(etcd --version 2>/dev/null | head -1) · etcdctl: $(ETCDCTL_API=3 etcdctl version 2>/dev/null | head -1)"
