#!/bin/sh
# Turns secrets that ECS injects as environment variables into the files the
# services read, readable only by this user, then runs the command:
#   WEFT_TLS_CERT_PEM, WEFT_TLS_KEY_PEM, WEFT_TLS_CA_PEM -> /run/weft/tls/*.pem
#   WEFT_OPERATOR_CA_PEM (the CA of operators' certificates, trusted beside
#     Private CA)                                       -> /run/weft/tls/operator-ca.pem
#   WEFT_POLICY_NAME (inventory, payments, orders)       -> /run/weft/policy.toml,
#     the shipped policy with its trust domain set to WEFT_TRUST_DOMAIN.
set -eu
umask 077
if [ -n "${WEFT_TLS_CERT_PEM:-}" ]; then
  # Written once: the container health check runs through here too, and
  # must not rewrite files the server may be reading. The check can start
  # while the server's entrypoint is still writing, so each writer uses
  # files of its own (.$$) and renames them into place: both write the
  # same contents, and a rename is atomic.
  if [ ! -f /run/weft/tls/ca.pem ]; then
    mkdir -p /run/weft/tls
    printf '%s\n' "$WEFT_TLS_CERT_PEM" > "/run/weft/tls/cert.$$"
    printf '%s\n' "$WEFT_TLS_KEY_PEM" > "/run/weft/tls/key.$$"
    printf '%s\n' "$WEFT_TLS_CA_PEM" > "/run/weft/tls/ca.$$"
    mv "/run/weft/tls/cert.$$" /run/weft/tls/cert.pem
    mv "/run/weft/tls/key.$$" /run/weft/tls/key.pem
    mv "/run/weft/tls/ca.$$" /run/weft/tls/ca.pem
  fi
  unset WEFT_TLS_CERT_PEM WEFT_TLS_KEY_PEM WEFT_TLS_CA_PEM
  export WEFT_TLS_CERT=/run/weft/tls/cert.pem WEFT_TLS_KEY=/run/weft/tls/key.pem WEFT_TLS_CA=/run/weft/tls/ca.pem
fi
if [ -n "${WEFT_OPERATOR_CA_PEM:-}" ]; then
  if [ ! -f /run/weft/tls/operator-ca.pem ]; then
    mkdir -p /run/weft/tls
    printf '%s\n' "$WEFT_OPERATOR_CA_PEM" > "/run/weft/tls/operator-ca.$$"
    mv "/run/weft/tls/operator-ca.$$" /run/weft/tls/operator-ca.pem
  fi
  unset WEFT_OPERATOR_CA_PEM
fi
if [ -n "${WEFT_POLICY_NAME:-}" ]; then
  if [ ! -f /run/weft/policy.toml ]; then
    sed "s#spiffe://weft.local/#spiffe://${WEFT_TRUST_DOMAIN:-weft.local}/#g" \
      "/etc/weft/policy/${WEFT_POLICY_NAME}.toml" > "/run/weft/policy.$$"
    mv "/run/weft/policy.$$" /run/weft/policy.toml
  fi
  export WEFT_POLICY=/run/weft/policy.toml
fi
exec "$@"
