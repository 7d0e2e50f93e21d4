// The TypeScript SDK against a live mesh over mTLS: place an order, read it
// back, list it. scripts/test starts the mesh (`weft up`) and sets
// WEFT_SDK_TARGET (an orders instance), WEFT_SDK_CERTS and WEFT_SDK_ACCOUNT.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { Code, ConnectError, createClient } from "@connectrpc/connect";

import { OrderStatus, OrdersService, meshTransport } from "../src/index.js";

function setting(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through scripts/test, which starts a mesh`);
  return value;
}

const orders = createClient(
  OrdersService,
  meshTransport({ address: setting("WEFT_SDK_TARGET"), certs: setting("WEFT_SDK_CERTS") }),
);

test("places an order, reads it back and lists it", async () => {
  const customerId = `typescript-${randomUUID().slice(0, 8)}`;
  const { order } = await orders.placeOrder(
    {
      idempotencyKey: `typescript-${randomUUID()}`,
      customerId,
      paymentAccountId: setting("WEFT_SDK_ACCOUNT"),
      lines: [{ sku: "GIZMO-1", quantity: 2n }],
    },
    { timeoutMs: 30_000 },
  );
  assert.ok(order);
  assert.equal(order.status, OrderStatus.CONFIRMED);
  assert.equal(order.total?.amountMinor, 2n * (order.lines[0].unitPrice?.amountMinor ?? 0n));
  const read = await orders.getOrder({ orderId: order.orderId }, { timeoutMs: 10_000 });
  assert.equal(read.order?.orderId, order.orderId);
  assert.equal(read.order?.status, OrderStatus.CONFIRMED);
  const listed = await orders.listOrders({ customerId }, { timeoutMs: 10_000 });
  assert.deepEqual(listed.orders.map((o) => o.orderId), [order.orderId]);
});

test("bad input is INVALID_ARGUMENT naming the field", async () => {
  await assert.rejects(orders.getOrder({ orderId: "nope" }, { timeoutMs: 10_000 }), (e: unknown) => {
    const err = ConnectError.from(e);
    assert.equal(err.code, Code.InvalidArgument);
    assert.match(err.rawMessage, /^order_id/);
    return true;
  });
});

test("verifies the server against serverName when the address is not its name", async () => {
  // As through a load balancer: the address is not the certificate's name.
  const via = (serverName: string) =>
    createClient(
      OrdersService,
      meshTransport({ address: setting("WEFT_SDK_TARGET"), certs: setting("WEFT_SDK_CERTS"), serverName }),
    );
  const listed = await via("localhost").listOrders({ customerId: "nobody" }, { timeoutMs: 10_000 });
  assert.deepEqual(listed.orders, []);
  await assert.rejects(via("elsewhere.example").listOrders({ customerId: "nobody" }, { timeoutMs: 10_000 }));
});
