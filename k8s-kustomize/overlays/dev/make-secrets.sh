#!/bin/sh
# Writes secrets.env for the dev overlay: every secret random, made here, never committed.
# Keeps an existing file (the running cluster's database was initialised with its password).
#   TELEGRAM_BOT_TOKEN=123:abc k8s-kustomize/overlays/dev/make-secrets.sh
set -eu
target="$(dirname "$0")/secrets.env"
if [ -e "$target" ]; then
    echo "$target exists; kept" >&2
    exit 0
fi
hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
umask 077
{
    echo "TELEGRAM_BOT_TOKEN=${TELEGRAM_BOT_TOKEN:-}"
    echo "TELEGRAM_WEBHOOK_SECRET=$(hex)"
    echo "SECRET_KEY=$(hex)"
    echo "JWT_SECRET_KEY=$(hex)"
    echo "ENCRYPTION_KEY=$(hex)"
    echo "OPENAI_API_KEYS="
    echo "SENTRY_DSN="
    echo "DB_PASSWORD=$(hex)"
    echo "REDIS_PASSWORD=$(hex)"
} > "$target"
echo "wrote $target" >&2
