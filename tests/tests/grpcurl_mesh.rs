//! The real grpcurl over mTLS against every service of the mesh (with the
//! shipped policies, as the operator), through reflection only: list and
//! describe each service, call each, and check health through
//! grpc.health.v1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;

use weft_tests::mesh::Mesh;
use weft_tests::tools::tool;

/// Runs `grpcurl <mTLS flags> [-d DATA] ADDR VERB [SYMBOL]`; returns stdout.
async fn grpcurl(mesh: &Mesh, addr: SocketAddr, data: Option<&str>, verb: &[&str]) -> String {
    let operator = mesh.operator();
    let mut command = Command::new(tool("grpcurl").unwrap());
    command
        .arg("-cacert")
        .arg(&operator.trust_bundle)
        .arg("-cert")
        .arg(&operator.cert)
        .arg("-key")
        .arg(&operator.key);
    if let Some(data) = data {
        command.args(["-d", data]);
    }
    command.arg(addr.to_string()).args(verb);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "grpcurl {verb:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_describes_calls_and_health_checks_every_service() {
    let mesh = Mesh::start().await.unwrap();
    let account = mesh.open_account("curly", 10_000).await.unwrap();
    mesh.product("CURL-1", 250, 10).await.unwrap();
    let calls: [(&str, &str, &str, &str, &str); 3] = [
        (
            "inventory",
            "weft.inventory.v1.InventoryService",
            "GetStock",
            r#"{"skus":["CURL-1"]}"#,
            "\"available\": \"10\"",
        ),
        (
            "payments",
            "weft.payments.v1.PaymentsService",
            "GetLedgerTotals",
            "{}",
            // The deposit: two entries summing to zero (a zero is omitted in JSON).
            "\"entryCount\": \"2\"",
        ),
        (
            "orders",
            "weft.orders.v1.OrdersService",
            "PlaceOrder",
            &format!(
                r#"{{"idempotency_key":"curl-1","customer_id":"curly","payment_account_id":"{account}","lines":[{{"sku":"CURL-1","quantity":"1"}}]}}"#
            ),
            "ORDER_STATUS_CONFIRMED",
        ),
    ];
    for (service, full, method, data, expect) in calls {
        for addr in mesh.addresses(service) {
            let listed = grpcurl(&mesh, addr, None, &["list"]).await;
            assert!(listed.contains(full), "{service} lists {listed}");
            assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
            // Only what this server serves is advertised.
            assert_eq!(listed.matches("weft.").count(), 1, "{listed}");
            let described = grpcurl(&mesh, addr, None, &["describe", full]).await;
            assert!(described.contains(&format!("rpc {method}")), "{described}");
            let health = grpcurl(
                &mesh,
                addr,
                Some(&format!(r#"{{"service":"{full}"}}"#)),
                &["grpc.health.v1.Health/Check"],
            )
            .await;
            assert!(health.contains("SERVING"), "{health}");
        }
        let addr = mesh.addresses(service)[0];
        let answer = grpcurl(&mesh, addr, Some(data), &[&format!("{full}/{method}")]).await;
        assert!(answer.contains(expect), "{service}/{method}: {answer}");
    }
    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}
