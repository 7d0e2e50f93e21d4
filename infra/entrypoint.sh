#!/bin/sh
# Turns secrets that ECS injects as environment variables into the files the
# services read, readable only by this user, then runs the command:
#   WEFT_TLS_CERT_PEM, WEFT_TLS_KEY_PEM, WEFT_TLS_CA_PEM -> /run/weft/tls/*.pem
#   WEFT_POLICY_NAME (inventory, payments, orders)       -> /run/weft/policy.toml,
#     the shipped policy with its trust domain set to WEFT_TRUST_DOMAIN.
set -eu
umask 077
if [ -n "${WEFT_TLS_CERT_PEM:-}" ]; then
  # Written once: the container health check runs through here too, and
  # must not rewrite files the server may be reading.
  if [ ! -f /run/weft/tls/ca.pem ]; then
    mkdir -p /run/weft/tls
    printf '%s\n' "$WEFT_TLS_CERT_PEM" > /run/weft/tls/cert.tmp
    printf '%s\n' "$WEFT_TLS_KEY_PEM" > /run/weft/tls/key.tmp
    printf '%s\n' "$WEFT_TLS_CA_PEM" > /run/weft/tls/ca.tmp
    mv /run/weft/tls/cert.tmp /run/weft/tls/cert.pem
    mv /run/weft/tls/key.tmp /run/weft/tls/key.pem
    mv /run/weft/tls/ca.tmp /run/weft/tls/ca.pem
  fi
  unset WEFT_TLS_CERT_PEM WEFT_TLS_KEY_PEM WEFT_TLS_CA_PEM
  export WEFT_TLS_CERT=/run/weft/tls/cert.pem WEFT_TLS_KEY=/run/weft/tls/key.pem WEFT_TLS_CA=/run/weft/tls/ca.pem
fi
if [ -n "${WEFT_POLICY_NAME:-}" ]; then
  [ -f /run/weft/policy.toml ] || sed "s#spiffe://weft.local/#spiffe://${WEFT_TRUST_DOMAIN:-weft.local}/#g" \
    "/etc/weft/policy/${WEFT_POLICY_NAME}.toml" > /run/weft/policy.toml
  export WEFT_POLICY=/run/weft/policy.toml
fi
exec "$@"
