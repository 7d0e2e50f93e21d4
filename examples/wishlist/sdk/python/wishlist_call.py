#!/usr/bin/env python
"""Adds a product to a customer's wishlist and prints the SKUs on the list as
JSON, over mutual TLS with an operator's certificate (Weft's SDK builds the
channel). Weft's SDK must be importable: put sdk/python/src on PYTHONPATH.

    PYTHONPATH=sdk/python/src python examples/wishlist/sdk/python/wishlist_call.py \\
        127.0.0.1:PORT .weft/certs alice WIDGET-1
    ["WIDGET-1"]

A failed call prints its status (e.g. "NOT_FOUND: ...") on standard error and
exits with the status's code (NOT_FOUND is 5, UNAVAILABLE 14, ...)."""

import argparse
import json
import sys

import grpc
import weft_sdk

from wishlist.v1 import wishlist_pb2, wishlist_pb2_grpc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a wishlist instance, host:port")
    parser.add_argument("certs", help="the certificates directory (ca.pem, operator-NAME.pem/.key)")
    parser.add_argument("customer", help="whose wishlist")
    parser.add_argument("sku", help="the product to add")
    parser.add_argument("--operator", default="dev", help="the operator certificate's NAME (default dev)")
    args = parser.parse_args(argv)

    try:
        channel = weft_sdk.channel(args.target, certs=args.certs, operator=args.operator)
    except OSError as e:
        # A certificate file that is missing or unreadable: not a call's status.
        print(f"certificates: {e}", file=sys.stderr)
        return 2
    with channel:
        wishlist = wishlist_pb2_grpc.WishlistServiceStub(channel)
        try:
            wishlist.AddItem(
                wishlist_pb2.AddItemRequest(customer_id=args.customer, sku=args.sku), timeout=10
            )
            listed = wishlist.ListItems(wishlist_pb2.ListItemsRequest(customer_id=args.customer), timeout=10)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return e.code().value[0]
    print(json.dumps([item.sku for item in listed.items]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
