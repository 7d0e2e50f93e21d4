"""The moto server, with Cloud Map's instances revision and Private CA's
certificate validity kept as AWS keeps them.

moto computes DiscoverInstancesRevision as the sum of the revisions of the
instances registered now, so registering one instance and deregistering
another between two polls leaves it unchanged, and a poller misses both (it
compares revisions for equality). On AWS the revision moves on every
registration and deregistration (not on health changes). This counts every
registration and deregistration the service has seen, which moves as AWS's
does.

moto's IssueCertificate ignores Validity (every certificate is valid for a
year from now) where AWS requires it and honours it, and sets notBefore to
now where AWS sets it an hour back for clock skew. Here Validity (ABSOLUTE,
END_DATE, DAYS, MONTHS, YEARS) and ValidityNotBefore (ABSOLUTE) are applied
as AWS documents them, so certificates of a few seconds can be issued and
renewed. Everything else is moto's own.

Run as moto_server is: python moto_server.py -H 127.0.0.1 -p PORT
"""

import datetime
import json
import sys
import threading

from moto.acmpca import models as pca_models
from moto.acmpca import responses as pca_responses
from moto.server import main
from moto.servicediscovery.models import ServiceDiscoveryBackend


def discover_instances_revision(self, namespace_name, service_name):
    # The same lookup (and the same NamespaceNotFound / ServiceNotFound).
    self.discover_instances(namespace_name, service_name)
    (namespace,) = [ns for ns in self.list_namespaces() if ns.name == namespace_name]
    (service,) = [s for s in self.list_services() if s.name == service_name and s.namespace_id == namespace.id]
    # instances_revision keeps a count per instance id ever registered, bumped
    # on registration and deregistration: its sum only grows.
    return sum(service.instances_revision.values())


ServiceDiscoveryBackend.discover_instances_revision = discover_instances_revision

_issuing = threading.local()


def _moment(validity, now):
    kind, value = validity["Type"], int(validity["Value"])
    if kind == "ABSOLUTE":
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    if kind == "END_DATE":
        text = str(value)
        form = "%Y%m%d%H%M%S" if len(text) == 14 else "%y%m%d%H%M%S"
        return datetime.datetime.strptime(text, form).replace(tzinfo=datetime.timezone.utc)
    days = {"DAYS": 1, "MONTHS": 30, "YEARS": 365}[kind]
    return now + datetime.timedelta(days=value * days)


def issue_certificate(self):
    params = json.loads(self.body)
    if "Validity" not in params:
        # AWS: Validity is a required member of IssueCertificateRequest.
        return 400, {}, json.dumps({"__type": "ValidationException", "message": "Validity is required"})
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(minutes=60)
    if "ValidityNotBefore" in params:
        not_before = _moment(params["ValidityNotBefore"], now)
    _issuing.window = (not_before, _moment(params["Validity"], now))
    try:
        return _issue_certificate(self)
    finally:
        _issuing.window = None


def generate_cert(self, subject, public_key, extensions):
    window = getattr(_issuing, "window", None)
    if window is None:
        return _generate_cert(self, subject, public_key, extensions)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(self.issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0])
        .not_valid_after(window[1])
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


_issue_certificate = pca_responses.ACMPCAResponse.issue_certificate
pca_responses.ACMPCAResponse.issue_certificate = issue_certificate
_generate_cert = pca_models.CertificateAuthority.generate_cert
pca_models.CertificateAuthority.generate_cert = generate_cert

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
