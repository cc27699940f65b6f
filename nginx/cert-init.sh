#!/bin/sh
# One-shot (compose service "cert-init"): makes a self-signed certificate when none is given, so
# `docker compose up` is the whole install. Put your own tls.crt/tls.key in the certificate
# folder (TLS_CERTS_DIR, default compose/certs) and this does nothing.
set -eu
dir=${CERT_DIR:-/certs}
cn=${TLS_DOMAIN:-localhost}
if [ -s "$dir/tls.crt" ] && [ -s "$dir/tls.key" ]; then
    echo "cert-init: using the certificate in $dir"
    exit 0
fi
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 825 \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" \
    -subj "/CN=$cn" -addext "subjectAltName=DNS:$cn,DNS:localhost,IP:127.0.0.1"
chmod 0644 "$dir/tls.crt"
chmod 0600 "$dir/tls.key"
echo "cert-init: made a self-signed certificate for $cn in $dir (replace it with a real one)"
