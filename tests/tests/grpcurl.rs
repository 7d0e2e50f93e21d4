//! Drives a running inventory server with the real grpcurl, through server
//! reflection only (no .proto files): list, describe, calls and health.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use weft_tests::TestDb;
use weft_tests::inventory::Inventory;
use weft_tests::tools::tool;

/// Runs grpcurl (plaintext) against `addr` off the async threads, so the
/// server keeps serving, and returns stdout, failing on a non-zero exit.
async fn grpcurl(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let binary = tool("grpcurl").unwrap();
    let mut command = Command::new(binary);
    // grpcurl [flags] ADDRESS [list|describe] [SYMBOL]: flags come before
    // the address, the verb and symbol after it.
    let split = args
        .iter()
        .position(|a| matches!(*a, "list" | "describe"))
        .unwrap_or(args.len() - 1);
    command
        .arg("-plaintext")
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
    let addr = server.addr();

    let services = grpcurl(addr, &["list"]).await;
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

    let methods = grpcurl(addr, &["list", "weft.inventory.v1.InventoryService"]).await;
    assert!(
        methods.contains("weft.inventory.v1.InventoryService.ReserveStock"),
        "{methods}"
    );

    let description = grpcurl(addr, &["describe", "weft.inventory.v1.InventoryService"]).await;
    assert!(
        description.contains("rpc ReserveStock ( .weft.inventory.v1.ReserveStockRequest ) returns ( .weft.inventory.v1.ReserveStockResponse )"),
        "{description}"
    );
    let message = grpcurl(addr, &["describe", "weft.inventory.v1.ReserveStockRequest"]).await;
    assert!(
        message.contains("repeated .weft.inventory.v1.ReservationLineRequest lines = 3;"),
        "{message}"
    );

    let created = grpcurl(
        addr,
        &[
            "-d",
            r#"{"idempotency_key":"k1","sku":"GRPCURL-1","name":"Widget","unit_price":{"amount_minor":"499","currency_code":"EUR"},"initial_stock":"7"}"#,
            "weft.inventory.v1.InventoryService/CreateProduct",
        ],
    )
    .await;
    assert!(created.contains(r#""sku": "GRPCURL-1""#), "{created}");

    let reserved = grpcurl(
        addr,
        &[
            "-d",
            r#"{"idempotency_key":"k2","order_id":"o-1","lines":[{"sku":"GRPCURL-1","quantity":"3"}]}"#,
            "weft.inventory.v1.InventoryService/ReserveStock",
        ],
    )
    .await;
    assert!(reserved.contains("RESERVATION_STATUS_HELD"), "{reserved}");

    let stock = grpcurl(
        addr,
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
        addr,
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
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args([
                "-plaintext",
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
