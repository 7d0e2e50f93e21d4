"""The moto server, with Cloud Map's instances revision kept as AWS keeps it.

moto computes DiscoverInstancesRevision as the sum of the revisions of the
instances registered now, so registering one instance and deregistering
another between two polls leaves it unchanged, and a poller misses both (it
compares revisions for equality). On AWS the revision moves on every
registration and deregistration (not on health changes). This counts every
registration and deregistration the service has seen, which moves as AWS's
does; everything else is moto's own.

Run as moto_server is: python moto_server.py -H 127.0.0.1 -p PORT
"""

import sys

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

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
