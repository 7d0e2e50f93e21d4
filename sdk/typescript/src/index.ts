// Calling Weft from TypeScript: a gRPC transport over mutual TLS from
// certificate files, and the generated messages and services.
//
//   import { meshTransport, OrdersService } from "@weft/sdk";
//   import { createClient } from "@connectrpc/connect";
//   const orders = createClient(OrdersService, meshTransport({ address: "127.0.0.1:7003", certs: ".weft/certs" }));
//   const { order } = await orders.getOrder({ orderId: "..." });

import { readFileSync } from "node:fs";
import { join } from "node:path";

import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

export * from "./gen/weft/money/v1/money_pb.js";
export * from "./gen/weft/inventory/v1/inventory_pb.js";
export * from "./gen/weft/payments/v1/payments_pb.js";
export * from "./gen/weft/orders/v1/orders_pb.js";

/** Where a Weft service is and who is calling. */
export interface MeshOptions {
  /** host:port of the service; its certificate must name the host (weft certs issue --san), or `serverName`. */
  address: string;
  /**
   * The name to verify the server's certificate against when `address` is not
   * it: through a load balancer, the service's own name (in AWS,
   * `orders.<namespace>`, the stack's IngressServerName output).
   */
  serverName?: string;
  /** A directory laid out by `weft certs`: ca.pem, operator-NAME.pem and .key. */
  certs?: string;
  /** The operator in `certs` (default "dev"). */
  operator?: string;
  /** Explicit PEM file paths instead of `certs`. */
  ca?: string;
  cert?: string;
  key?: string;
}

/** A gRPC (HTTP/2) transport to one Weft service over mutual TLS. */
export function meshTransport(options: MeshOptions): Transport {
  const operator = options.operator ?? "dev";
  const path = (explicit: string | undefined, file: string): string => {
    if (explicit) return explicit;
    if (!options.certs) throw new Error("give certs (a directory) or ca, cert and key");
    return join(options.certs, file);
  };
  return createGrpcTransport({
    baseUrl: `https://${options.address}`,
    nodeOptions: {
      ca: readFileSync(path(options.ca, "ca.pem")),
      cert: readFileSync(path(options.cert, `operator-${operator}.pem`)),
      key: readFileSync(path(options.key, `operator-${operator}.key`)),
      ...(options.serverName ? { servername: options.serverName } : {}),
    },
  });
}
