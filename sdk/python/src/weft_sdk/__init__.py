"""Calling Weft from Python: an mTLS channel from certificate files, and the
generated stubs (``weft.<domain>.v1.<domain>_pb2`` / ``_pb2_grpc``).

    import weft_sdk
    from weft.orders.v1 import orders_pb2, orders_pb2_grpc

    channel = weft_sdk.channel("127.0.0.1:7003", certs=".weft/certs")
    orders = orders_pb2_grpc.OrdersServiceStub(channel)
    order = orders.GetOrder(orders_pb2.GetOrderRequest(order_id="..."), timeout=5).order
"""

import pathlib

import grpc

__all__ = ["channel", "credentials"]


def credentials(certs=None, *, ca=None, cert=None, key=None, operator="dev"):
    """Client TLS credentials: the CA bundle and this caller's certificate and
    key, from explicit paths or from a directory laid out by ``weft certs``
    (``ca.pem``, ``operator-NAME.pem``, ``operator-NAME.key``)."""
    if certs is not None:
        d = pathlib.Path(certs)
        ca = ca or d / "ca.pem"
        cert = cert or d / f"operator-{operator}.pem"
        key = key or d / f"operator-{operator}.key"
    if not (ca and cert and key):
        raise ValueError("give certs= (a directory) or all of ca=, cert= and key=")
    return grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(ca).read_bytes(),
        private_key=pathlib.Path(key).read_bytes(),
        certificate_chain=pathlib.Path(cert).read_bytes(),
    )


def channel(target, certs=None, *, server_name=None, **paths):
    """A gRPC channel to ``target`` (``host:port``) over mutual TLS. The
    server's certificate must carry ``host`` as a SAN (``weft certs issue
    --san``), as Weft's development certificates do for 127.0.0.1, or
    ``server_name`` when given: through a load balancer, ``target`` is the
    balancer and ``server_name`` the service's own name (in AWS,
    ``orders.<namespace>``, the stack's IngressServerName output)."""
    options = []
    if server_name:
        options = [("grpc.ssl_target_name_override", server_name), ("grpc.default_authority", server_name)]
    return grpc.secure_channel(target, credentials(certs, **paths), options=options)
