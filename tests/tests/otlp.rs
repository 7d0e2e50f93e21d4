//! Trace export over OTLP from a real service process: inventory, started
//! from its binary with `OTEL_EXPORTER_OTLP_ENDPOINT` naming a collector (an
//! OTLP/gRPC trace service run by the test), exports the span of a call it
//! served, in the caller's trace and under its own service name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use weft_mesh::ClientOptions;
use weft_proto::inventory::v1 as pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_tests::TestDb;
use weft_tests::cluster::Cluster;
use weft_tests::load::wait_for_endpoints;
use weft_tests::process::{ServiceProcess, binary, service_env};

/// A collector that hands every export to the test.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_exports_the_spans_of_its_calls_to_a_collector() {
    // The test's own spans carry a trace for the call to continue.
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (exports, mut received) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(exports)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let db = TestDb::create().await.unwrap();
    let cluster = Cluster::new().unwrap();
    let identity = cluster.pki().service("inventory", "inventory").unwrap();
    let env = service_env(
        db.url(),
        &identity,
        &[
            ("WEFT_DISCOVERY", cluster.setting()),
            ("WEFT_INSTANCE_ID", "otlp-0".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    let _inventory = ServiceProcess::start(&binary("weft-inventory").unwrap(), &env).unwrap();
    let channel = cluster.channel(ClientOptions::default()).await.unwrap();
    wait_for_endpoints(&channel, 1).await.unwrap();

    let span = tracing::info_span!("test.call");
    let trace_id = weft_mesh::trace_context::trace_id(&span).expect("a traced span");
    let stock = InventoryServiceClient::new(channel)
        .get_stock(pb::GetStockRequest {
            skus: vec!["NONE-1".into()],
        })
        .instrument(span)
        .await
        .unwrap_err();
    assert_eq!(stock.code(), tonic::Code::NotFound);

    // The server span of that call arrives, in our trace, from "inventory".
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let found = loop {
        let export = tokio::time::timeout_at(deadline, received.recv())
            .await
            .expect("no span of the call reached the collector")
            .unwrap();
        let hit = export.resource_spans.iter().find_map(|rs| {
            let service = rs
                .resource
                .as_ref()?
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")?
                .value
                .clone()?;
            rs.scope_spans
                .iter()
                .flat_map(|ss| ss.spans.iter())
                .find(|s| {
                    hex(&s.trace_id) == trace_id
                        && s.name == "weft.inventory.v1.InventoryService/GetStock"
                })
                .map(|s| (service, s.clone()))
        });
        if let Some(hit) = hit {
            break hit;
        }
    };
    let (service, span) = found;
    assert_eq!(
        format!("{:?}", service.value),
        format!(
            "{:?}",
            Some(
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                    "inventory".into()
                )
            )
        )
    );
    assert_eq!(
        span.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
    );
    server.abort();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
