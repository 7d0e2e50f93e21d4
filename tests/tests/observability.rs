//! Observability end to end on the whole mesh: a placed order is one trace
//! whose spans cover orders, inventory and payments (collected by an
//! in-process span exporter); each instance's metrics endpoint parses as
//! Prometheus text and its counters match the calls made, failed calls
//! under their status codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tonic::Code;
use tracing_subscriber::layer::SubscriberExt;
use weft_proto::inventory::v1 as inventory_pb;
use weft_proto::orders::v1 as pb;
use weft_tests::mesh::{Mesh, order_request, placed};

/// The process's span pipeline: every span of every service in this test
/// binary, kept in memory.
fn spans() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static PIPELINE: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("weft-tests")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        (provider, exporter)
    })
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_is_one_trace_across_all_three_services() {
    let (provider, exporter) = spans();
    let mesh = Mesh::start().await.unwrap();
    mesh.product("TRACE-1", 700, 5).await.unwrap();
    let account = mesh.open_account("tracy", 10_000).await.unwrap();
    let mut orders = mesh.orders().await.unwrap();
    let order = placed(
        &mut orders,
        order_request("t-1", "tracy", &account, &[("TRACE-1", 1)]),
    )
    .await;
    assert_eq!(order.status(), pb::OrderStatus::Confirmed);
    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
    provider.force_flush().unwrap();

    let all = exporter.get_finished_spans().unwrap();
    let place = all
        .iter()
        .find(|s| {
            attribute(s, "rpc.method").as_deref() == Some("PlaceOrder")
                && s.span_kind == opentelemetry::trace::SpanKind::Server
        })
        .expect("a server span for PlaceOrder");
    let trace: TraceId = place.span_context.trace_id();
    let in_trace: Vec<&SpanData> = all
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    let services: HashSet<String> = in_trace
        .iter()
        .filter_map(|s| attribute(s, "rpc.service"))
        .collect();
    for service in [
        "weft.orders.v1.OrdersService",
        "weft.inventory.v1.InventoryService",
        "weft.payments.v1.PaymentsService",
    ] {
        assert!(services.contains(service), "{service} not in {services:?}");
    }
    // The saga's four calls, each a client span with a server span below it.
    let by_id: HashMap<SpanId, &SpanData> = in_trace
        .iter()
        .map(|s| (s.span_context.span_id(), *s))
        .collect();
    for method in [
        "weft.inventory.v1.InventoryService/ReserveStock",
        "weft.payments.v1.PaymentsService/Authorize",
        "weft.inventory.v1.InventoryService/CommitReservation",
        "weft.payments.v1.PaymentsService/Capture",
    ] {
        let client = in_trace
            .iter()
            .find(|s| s.span_kind == opentelemetry::trace::SpanKind::Client && s.name == method)
            .unwrap_or_else(|| panic!("no client span for {method}"));
        let server = in_trace
            .iter()
            .find(|s| {
                s.span_kind == opentelemetry::trace::SpanKind::Server
                    && s.name == method
                    && s.parent_span_id == client.span_context.span_id()
            })
            .unwrap_or_else(|| panic!("no server span under the client span of {method}"));
        assert_eq!(
            attribute(server, "rpc.grpc.status_code").as_deref(),
            Some("0")
        );
        // The client span hangs off the PlaceOrder call, however deep.
        let mut at = client.parent_span_id;
        while at != place.span_context.span_id() {
            at = by_id
                .get(&at)
                .unwrap_or_else(|| panic!("{method}'s client span is not under PlaceOrder"))
                .parent_span_id;
        }
    }
}

/// Parses Prometheus text: every line a comment or `name{labels} value`;
/// returns the samples.
fn parse(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF terminator");
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), HashMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        samples.push((name, labels, value));
    }
    samples
}

/// The sum over every instance of samples named `name` whose labels
/// include `want`.
fn sum(scrapes: &[String], name: &str, want: &[(&str, &str)]) -> f64 {
    scrapes
        .iter()
        .flat_map(|text| parse(text))
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoints_count_the_calls_made_and_failures_by_status() {
    spans();
    let mesh = Mesh::start().await.unwrap();
    mesh.product("METER-1", 500, 2).await.unwrap();
    let rich = mesh.open_account("rita", 10_000).await.unwrap();
    let poor = mesh.open_account("pete", 1).await.unwrap();
    let mut orders = mesh.orders().await.unwrap();
    let ok = placed(
        &mut orders,
        order_request("m-1", "rita", &rich, &[("METER-1", 1)]),
    )
    .await;
    assert_eq!(ok.status(), pb::OrderStatus::Confirmed);
    let declined = placed(
        &mut orders,
        order_request("m-2", "pete", &poor, &[("METER-1", 1)]),
    )
    .await;
    assert_eq!(declined.status(), pb::OrderStatus::Rejected);
    let err = orders
        .get_order(pb::GetOrderRequest {
            order_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The operator may not reserve: PERMISSION_DENIED at inventory.
    let err = mesh
        .inventory()
        .await
        .unwrap()
        .reserve_stock(inventory_pb::ReserveStockRequest {
            idempotency_key: "denied".into(),
            order_id: "o".into(),
            lines: vec![inventory_pb::ReservationLineRequest {
                sku: "METER-1".into(),
                quantity: 1,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    mesh.check_invariants().await.unwrap();

    let orders_text = mesh.scrape("orders").await.unwrap();
    let inventory_text = mesh.scrape("inventory").await.unwrap();
    let payments_text = mesh.scrape("payments").await.unwrap();
    let orders_svc = ("grpc_service", "weft.orders.v1.OrdersService");
    let inv_svc = ("grpc_service", "weft.inventory.v1.InventoryService");

    // Orders, server side: two PlaceOrder answered OK (a rejection is an
    // answer), one GetOrder NOT_FOUND.
    let place = [orders_svc, ("grpc_method", "PlaceOrder")];
    assert_eq!(sum(&orders_text, "weft_server_requests_total", &place), 2.0);
    assert_eq!(
        sum(
            &orders_text,
            "weft_server_responses_total",
            &[place[0], place[1], ("grpc_code", "OK")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &orders_text,
            "weft_server_responses_total",
            &[
                orders_svc,
                ("grpc_method", "GetOrder"),
                ("grpc_code", "NOT_FOUND")
            ]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &orders_text,
            "weft_server_request_duration_seconds_count",
            &place
        ),
        2.0
    );

    // Orders, client side: two reservations, two authorizations, one
    // release (the declined one), one commit and one capture; per endpoint.
    let client = |method: &str| {
        sum(
            &orders_text,
            "weft_client_responses_total",
            &[("grpc_method", method), ("grpc_code", "OK")],
        )
    };
    assert_eq!(
        client("weft.inventory.v1.InventoryService/ReserveStock"),
        2.0
    );
    assert_eq!(client("weft.payments.v1.PaymentsService/Authorize"), 2.0);
    assert_eq!(
        client("weft.inventory.v1.InventoryService/ReleaseReservation"),
        1.0
    );
    assert_eq!(
        client("weft.inventory.v1.InventoryService/CommitReservation"),
        1.0
    );
    assert_eq!(client("weft.payments.v1.PaymentsService/Capture"), 1.0);
    assert_eq!(
        sum(
            &orders_text,
            "weft_client_endpoints",
            &[("upstream", "inventory"), ("state", "available")]
        ),
        4.0,
        "two inventory endpoints in each of two orders instances"
    );
    let staleness = sum(
        &orders_text,
        "weft_discovery_staleness_seconds",
        &[("upstream", "payments")],
    );
    assert!(staleness < 10.0, "staleness {staleness}");
    assert!(
        sum(
            &orders_text,
            "weft_db_pool_connections",
            &[("state", "max")]
        ) > 0.0
    );

    // Inventory, server side: the same reservations, by the orders identity,
    // and the operator's refused one.
    let reserve = [inv_svc, ("grpc_method", "ReserveStock")];
    assert_eq!(
        sum(
            &inventory_text,
            "weft_server_responses_total",
            &[
                reserve[0],
                reserve[1],
                ("peer", "spiffe://weft.test/service/orders"),
                ("grpc_code", "OK")
            ]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &inventory_text,
            "weft_server_responses_total",
            &[reserve[0], reserve[1], ("grpc_code", "PERMISSION_DENIED")]
        ),
        1.0
    );
    // Payments: one capture.
    assert_eq!(
        sum(
            &payments_text,
            "weft_server_responses_total",
            &[("grpc_method", "Capture"), ("grpc_code", "OK")]
        ),
        1.0
    );
    mesh.stop().await.unwrap();
}
