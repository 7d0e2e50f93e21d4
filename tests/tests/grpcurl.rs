//! Drives a running inventory server with the real grpcurl over mTLS
//! (`-cacert`, `-cert`, `-key`), through server reflection only (no .proto
//! files): list, describe, calls and health.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use weft_tests::TestDb;
use weft_tests::inventory::Inventory;
use weft_tests::tools::tool;

/// The flags that make grpcurl speak mTLS as the harness's operator.
fn tls_flags(server: &Inventory) -> Vec<String> {
    let client = server.client_identity().unwrap();
    vec![
        "-cacert".into(),
        client.trust_bundle.display().to_string(),
        "-cert".into(),
        client.cert.display().to_string(),
        "-key".into(),
        client.key.display().to_string(),
    ]
}

/// Runs grpcurl over mTLS against `server` off the async threads, so the
/// server keeps serving, and returns stdout, failing on a non-zero exit.
async fn grpcurl(server: &Inventory, args: &[&str]) -> String {
    let addr = server.addr();
    let binary = tool("grpcurl").unwrap();
    let mut command = Command::new(binary);
    // grpcurl [flags] ADDRESS [list|describe] [SYMBOL]: flags come before
    // the address, the verb and symbol after it.
    let split = args
        .iter()
        .position(|a| matches!(*a, "list" | "describe"))
        .unwrap_or(args.len() - 1);
    command
        .args(tls_flags(server))
        .args(&args[..split])
        .arg(addr.to_string())
        .args(&args[split..]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_inventory() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();

    let services = grpcurl(&server, &["list"]).await;
    for service in [
        "weft.inventory.v1.InventoryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.lines().any(|l| l.trim() == service),
            "{service} not in:\n{services}"
        );
    }

    assert!(
        !services.contains("weft.orders.v1.OrdersService"),
        "only served services are advertised:\n{services}"
    );

    let methods = grpcurl(&server, &["list", "weft.inventory.v1.InventoryService"]).await;
    assert!(
        methods.contains("weft.inventory.v1.InventoryService.ReserveStock"),
        "{methods}"
    );

    let description = grpcurl(&server, &["describe", "weft.inventory.v1.InventoryService"]).await;
    assert!(
        description.contains("rpc ReserveStock ( .weft.inventory.v1.ReserveStockRequest ) returns ( .weft.inventory.v1.ReserveStockResponse )"),
        "{description}"
    );
    let message = grpcurl(
        &server,
        &["describe", "weft.inventory.v1.ReserveStockRequest"],
    )
    .await;
    assert!(
        message.contains("repeated .weft.inventory.v1.ReservationLineRequest lines = 3;"),
        "{message}"
    );

    let created = grpcurl(
        &server,
        &[
            "-d",
            r#"{"idempotency_key":"k1","sku":"GRPCURL-1","name":"Widget","unit_price":{"amount_minor":"499","currency_code":"EUR"},"initial_stock":"7"}"#,
            "weft.inventory.v1.InventoryService/CreateProduct",
        ],
    )
    .await;
    assert!(created.contains(r#""sku": "GRPCURL-1""#), "{created}");

    let reserved = grpcurl(
        &server,
        &[
            "-d",
            r#"{"idempotency_key":"k2","order_id":"o-1","lines":[{"sku":"GRPCURL-1","quantity":"3"}]}"#,
            "weft.inventory.v1.InventoryService/ReserveStock",
        ],
    )
    .await;
    assert!(reserved.contains("RESERVATION_STATUS_HELD"), "{reserved}");

    let stock = grpcurl(
        &server,
        &[
            "-d",
            r#"{"skus":["GRPCURL-1"]}"#,
            "weft.inventory.v1.InventoryService/GetStock",
        ],
    )
    .await;
    assert!(
        stock.contains(r#""available": "4""#) && stock.contains(r#""reserved": "3""#),
        "{stock}"
    );

    let health = grpcurl(
        &server,
        &[
            "-d",
            r#"{"service":"weft.inventory.v1.InventoryService"}"#,
            "grpc.health.v1.Health/Check",
        ],
    )
    .await;
    assert!(health.contains("SERVING"), "{health}");

    server.stop().await.unwrap();
}

#[tokio::test]
async fn grpcurl_sees_invalid_argument_naming_the_field() {
    let db = TestDb::create().await.unwrap();
    let server = Inventory::start(&db).await.unwrap();
    let binary = tool("grpcurl").unwrap();
    let addr = server.addr().to_string();
    let flags = tls_flags(&server);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args(flags)
            .args([
                "-d",
                r#"{"skus":[]}"#,
                &addr,
                "weft.inventory.v1.InventoryService/GetStock",
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("skus:"),
        "{stderr}"
    );
    server.stop().await.unwrap();
}
