//! `weft load`: a steady stream of demo orders through the mesh, with a
//! progress line of rate, errors and latency once a second.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use weft_mesh::ClientOptions;
use weft_proto::orders::v1 as pb;
use weft_proto::orders::v1::orders_service_client::OrdersServiceClient;

use crate::target::{Mesh, MeshArgs};

/// How many distinct reasons an order was not confirmed are printed.
const MAX_REASONS: usize = 10;

/// `weft load`'s settings.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The paying account (`weft up` prints alice's).
    #[arg(long, env = "WEFT_LOAD_ACCOUNT")]
    pub account: String,
    /// Orders per second.
    #[arg(long, env = "WEFT_LOAD_RATE", default_value_t = 10.0)]
    pub rate: f64,
    /// Stop after this many orders (0: until Ctrl-C).
    #[arg(long, env = "WEFT_LOAD_COUNT", default_value_t = 0)]
    pub count: u64,
    /// The products to order, one per order in turn.
    #[arg(
        long = "sku",
        env = "WEFT_LOAD_SKUS",
        value_delimiter = ',',
        default_values_t = ["GIZMO-1".to_owned(), "WIDGET-1".to_owned()]
    )]
    pub skus: Vec<String>,
}

/// Places orders at the rate asked until Ctrl-C or the count.
pub async fn run(mesh: &MeshArgs, args: LoadArgs) -> Result<()> {
    let mesh = Mesh::connect(mesh).await?;
    mesh.require("orders").await?;
    let orders = OrdersServiceClient::new(mesh.channel("orders", ClientOptions::default())?);
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut ticker = tokio::time::interval(period);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, Option<String>)>();
    let mut sent = 0u64;
    let (mut ok, mut failed, mut rejected) = (0u64, 0u64, 0u64);
    let mut latencies: Vec<Duration> = Vec::new();
    let mut reasons = std::collections::HashSet::new();
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let signal = tokio::signal::ctrl_c();
    tokio::pin!(signal);
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = ticker.tick(), if args.count == 0 || sent < args.count => {
                let mut orders = orders.clone();
                let sku = args.skus[(sent as usize) % args.skus.len().max(1)].clone();
                let request = pb::PlaceOrderRequest {
                    idempotency_key: format!("load-{run_id}-{sent}"),
                    customer_id: "load".into(),
                    payment_account_id: args.account.clone(),
                    lines: vec![pb::OrderLineRequest { sku, quantity: 1 }],
                };
                sent += 1;
                let tx = tx.clone();
                tokio::spawn(async move {
                    let began = Instant::now();
                    let placed = match orders.place_order(request).await {
                        // An order still pending (its saga was taking over
                        // from an instance that stopped, say) is followed
                        // to its outcome: pending is not an answer.
                        Ok(r) => match r.into_inner().order {
                            Some(o) if o.status() == pb::OrderStatus::Pending => {
                                settle(&mut orders, o).await.map(tonic::Response::new)
                            }
                            other => Ok(tonic::Response::new(other)),
                        },
                        Err(s) => Err(s),
                    };
                    let outcome = match placed {
                        Ok(r) => match r.into_inner() {
                            Some(o) if o.status() == pb::OrderStatus::Confirmed => None,
                            Some(o) => Some(match &o.rejection {
                                Some(why) => format!("{:?}: {:?}: {}", o.status(), why.code(), why.message),
                                None => format!("{:?}", o.status()),
                            }),
                            None => Some("no order in the answer".to_owned()),
                        },
                        Err(s) => Some(format!("error {:?}: {}", s.code(), s.message())),
                    };
                    let _ = tx.send((began.elapsed(), outcome));
                });
            }
            Some((latency, outcome)) = rx.recv() => {
                latencies.push(latency);
                // Each distinct reason once, the first few only: the log
                // says why without growing with the run.
                if let Some(why) = &outcome
                    && reasons.len() < MAX_REASONS
                    && reasons.insert(why.clone())
                {
                    eprintln!("[load] not confirmed: {why}");
                }
                match outcome {
                    None => ok += 1,
                    Some(o) if o.starts_with("error") => failed += 1,
                    Some(_) => rejected += 1,
                }
                if args.count > 0 && ok + failed + rejected >= args.count {
                    break;
                }
            }
            _ = report.tick() => {
                latencies.sort();
                let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0);
                eprintln!(
                    "[load] {:.1} orders/s, {ok} confirmed, {rejected} rejected, {failed} errors, p50 {:.1} ms, p99 {:.1} ms",
                    (ok + failed + rejected) as f64 / started.elapsed().as_secs_f64().max(0.001),
                    at(0.5),
                    at(0.99)
                );
                latencies.clear();
            }
        }
    }
    eprintln!("[load] done: {sent} sent, {ok} confirmed, {rejected} rejected, {failed} errors");
    if failed > 0 {
        anyhow::bail!("{failed} orders failed");
    }
    Ok(())
}

/// How long a pending order is followed before it counts as not confirmed.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// Reads a pending order back until it is settled (or [`SETTLE_WITHIN`]
/// passes, when it is returned as last seen).
async fn settle(
    orders: &mut OrdersServiceClient<weft_mesh::MeshChannel>,
    mut order: pb::Order,
) -> Result<Option<pb::Order>, tonic::Status> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    while order.status() == pb::OrderStatus::Pending && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let read = orders
            .get_order(pb::GetOrderRequest {
                order_id: order.order_id.clone(),
            })
            .await?;
        match read.into_inner().order {
            Some(o) => order = o,
            None => break,
        }
    }
    Ok(Some(order))
}
