"""The Python SDK against a live mesh over mTLS: place an order, read it
back, list it. scripts/test starts the mesh (`weft up`) and sets
WEFT_SDK_TARGET (an orders instance), WEFT_SDK_CERTS and WEFT_SDK_ACCOUNT."""

import os
import unittest
import uuid

import grpc

import weft_sdk
from weft.orders.v1 import orders_pb2, orders_pb2_grpc


def setting(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run this through scripts/test, which starts a mesh")
    return value


class LiveMesh(unittest.TestCase):
    def setUp(self):
        self.channel = weft_sdk.channel(setting("WEFT_SDK_TARGET"), certs=setting("WEFT_SDK_CERTS"))
        self.orders = orders_pb2_grpc.OrdersServiceStub(self.channel)
        self.account = setting("WEFT_SDK_ACCOUNT")

    def tearDown(self):
        self.channel.close()

    def test_place_read_back_and_list_an_order(self):
        customer = f"python-{uuid.uuid4().hex[:8]}"
        placed = self.orders.PlaceOrder(
            orders_pb2.PlaceOrderRequest(
                idempotency_key=f"python-{uuid.uuid4()}",
                customer_id=customer,
                payment_account_id=self.account,
                lines=[orders_pb2.OrderLineRequest(sku="GIZMO-1", quantity=2)],
            ),
            timeout=30,
        ).order
        self.assertEqual(placed.status, orders_pb2.ORDER_STATUS_CONFIRMED)
        self.assertEqual(placed.total.amount_minor, 2 * placed.lines[0].unit_price.amount_minor)
        read = self.orders.GetOrder(orders_pb2.GetOrderRequest(order_id=placed.order_id), timeout=10).order
        self.assertEqual(read, placed)
        listed = self.orders.ListOrders(orders_pb2.ListOrdersRequest(customer_id=customer), timeout=10).orders
        self.assertEqual([o.order_id for o in listed], [placed.order_id])

    def test_bad_input_is_invalid_argument_naming_the_field(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.orders.GetOrder(orders_pb2.GetOrderRequest(order_id="nope"), timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(raised.exception.details().startswith("order_id"))

    def test_server_name_is_what_the_certificate_is_checked_against(self):
        # As through a load balancer: the address is not the certificate's name.
        def list_via(server_name):
            with weft_sdk.channel(setting("WEFT_SDK_TARGET"), certs=setting("WEFT_SDK_CERTS"),
                                  server_name=server_name) as ch:
                stub = orders_pb2_grpc.OrdersServiceStub(ch)
                return stub.ListOrders(orders_pb2.ListOrdersRequest(customer_id="nobody"), timeout=10).orders

        self.assertEqual(list(list_via("localhost")), [])
        with self.assertRaises(grpc.RpcError) as raised:
            list_via("elsewhere.example")
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)


if __name__ == "__main__":
    unittest.main()
