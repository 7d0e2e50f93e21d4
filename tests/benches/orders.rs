//! Orders end to end, printed: orders placed per second and p50/p99
//! latency of PlaceOrder through the whole mesh (two instances each of
//! orders, inventory and payments over mTLS, each service in a database of
//! its own on one PostgreSQL), the database time and each database's
//! committed transactions per order, against a baseline in the same run: the
//! four calls the saga makes (reserve, authorize, commit, capture) made
//! directly by the bench through the same mesh, one after another. Each row
//! runs the two in turn, `REPS` times, and prints medians, and the median of
//! the per-repetition ratios with their spread. Every row is run twice, on a
//! mesh with durable commits and on one whose commits do not wait for the
//! disk.
//! Run: `cargo bench -p weft-tests --bench orders`.

// Bench code: a panic is a failed run with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use weft_mesh::{ClientOptions, MeshChannel};
use weft_proto::inventory::v1 as inventory_pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::orders::v1 as orders_pb;
use weft_proto::payments::v1 as payments_pb;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use weft_tests::bench::{self, median, ratio_summary};
use weft_tests::mesh::{Mesh, eur, order_request};

/// Orders per phase (one repetition of one side).
const ORDERS: usize = 400;
/// Interleaved repetitions of each side per row.
const REPS: usize = 5;
const ACCOUNTS: usize = 64;
const SKUS: usize = 16;

fn main() {
    bench::run(run()).unwrap();
}

/// What one phase measured.
struct Phase {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Time inside statements, all databases, per order.
    db_ms_per_order: f64,
    /// Committed transactions per order in orders', inventory's and
    /// payments' databases.
    xacts_per_order: [f64; 3],
    /// Orders' database's commits per second (in a baseline phase, where
    /// no order is placed: its background of health checks and recovery
    /// polls).
    orders_xacts_per_second: f64,
    /// Seconds between the two readings of the counters.
    window_s: f64,
    /// Orders placed.
    orders: f64,
}

/// Each database's counters (orders, inventory, payments): active
/// milliseconds and committed transactions.
async fn db_counters(mesh: &Mesh) -> [(f64, i64); 3] {
    let db = mesh.db.connect().await.unwrap();
    // Statistics reach the view at most once a second per session.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    db.execute("SELECT pg_stat_clear_snapshot()", &[])
        .await
        .unwrap();
    let mut counters = [(0.0, 0); 3];
    for (n, service) in ["orders", "inventory", "payments"].iter().enumerate() {
        let row = db
            .query_one(
                "SELECT active_time, xact_commit FROM pg_stat_database WHERE datname = $1",
                &[&mesh.db_of(service).name()],
            )
            .await
            .unwrap();
        counters[n] = (row.get(0), row.get(1));
    }
    counters
}

async fn phase<F, Fut>(mesh: &Mesh, concurrency: usize, offset: usize, call: F) -> Phase
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let before = db_counters(mesh).await;
    let window = Instant::now();
    let started = Instant::now();
    let per_task = ORDERS / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let began = Instant::now();
                    call(offset + t * per_task + i).await;
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let after = db_counters(mesh).await;
    let window_s = window.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let n = latencies.len() as f64;
    Phase {
        per_second: n / elapsed.as_secs_f64(),
        p50_ms: at(0.50).as_secs_f64() * 1e3,
        p99_ms: at(0.99).as_secs_f64() * 1e3,
        db_ms_per_order: (0..3).map(|d| after[d].0 - before[d].0).sum::<f64>() / n,
        xacts_per_order: std::array::from_fn(|d| (after[d].1 - before[d].1) as f64 / n),
        orders_xacts_per_second: (after[0].1 - before[0].1) as f64 / window_s,
        window_s,
        orders: n,
    }
}

async fn run() {
    for durable in [true, false] {
        rows(durable).await;
    }
}

/// Every row on a mesh whose commits are `durable` or not.
async fn rows(durable: bool) {
    let mut mesh = Mesh::without_orders_apart(durable).await.unwrap();
    mesh.pool_size = 16;
    // Recovery looks for due sagas as often as in production.
    mesh.saga.recovery_every = Duration::from_secs(1);
    mesh.add_orders(2).await.unwrap();
    // Sixteen products: one would make its row the bottleneck.
    for n in 0..SKUS {
        mesh.product(&format!("BENCH-{n}"), 1000, 10_000_000)
            .await
            .unwrap();
    }
    let mut accounts = Vec::new();
    for n in 0..ACCOUNTS {
        accounts.push(
            mesh.open_account(&format!("bench-{n}"), 1_000_000_000)
                .await
                .unwrap(),
        );
    }
    let m = &mesh;
    let as_orders = async |service| {
        m.channel_as(service, m.orders_identity(), ClientOptions::default())
            .await
            .unwrap()
    };
    let inventory: InventoryServiceClient<MeshChannel> =
        InventoryServiceClient::new(as_orders("inventory").await);
    let payments: PaymentsServiceClient<MeshChannel> =
        PaymentsServiceClient::new(as_orders("payments").await);
    let orders = mesh.orders().await.unwrap();
    // The baseline pays its own payee, so the merchant's account keeps
    // matching the confirmed orders (an invariant checked at the end).
    let merchant = mesh.open_account("direct-payee", 0).await.unwrap();

    let commits = {
        let db = mesh.db.connect().await.unwrap();
        let fsync: String = db.query_one("SHOW fsync", &[]).await.unwrap().get(0);
        let sync: String = db
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap()
            .get(0);
        let what = if fsync == "on" && sync != "off" {
            "DURABLE commits"
        } else {
            "commits NOT durable"
        };
        format!("{what} (fsync {fsync}, synchronous_commit {sync})")
    };
    println!(
        "orders bench: {ORDERS} orders per phase, {REPS} interleaved repetitions of each side per \
         row (medians), 1 line each over {SKUS} products, {ACCOUNTS} paying accounts, one \
         merchant, 2 instances of each service, mTLS, a database per service, {commits}"
    );
    println!(
        "{:<34} {:>5} {:>10} {:>9} {:>9} {:>11} {:>21}",
        "", "conc", "orders/s", "p50 ms", "p99 ms", "db ms/order", "xacts: ord/inv/pay"
    );
    for concurrency in [1, 16, 64] {
        let round = concurrency;
        let direct = {
            let (inventory, payments, merchant, accounts) = (
                inventory.clone(),
                payments.clone(),
                merchant.clone(),
                accounts.clone(),
            );
            move |i: usize| {
                let (mut inventory, mut payments) = (inventory.clone(), payments.clone());
                let merchant = merchant.clone();
                let account = accounts[i % ACCOUNTS].clone();
                async move {
                    let id = format!("direct-{round}-{i}");
                    let reservation = inventory
                        .reserve_stock(inventory_pb::ReserveStockRequest {
                            idempotency_key: format!("{id}/reserve"),
                            order_id: id.clone(),
                            lines: vec![inventory_pb::ReservationLineRequest {
                                sku: format!("BENCH-{}", i % SKUS),
                                quantity: 1,
                            }],
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .reservation
                        .unwrap();
                    let auth = payments
                        .authorize(payments_pb::AuthorizeRequest {
                            idempotency_key: format!("{id}/authorize"),
                            account_id: account,
                            amount: Some(eur(1000)),
                            reference: id.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .authorization
                        .unwrap();
                    inventory
                        .commit_reservation(inventory_pb::CommitReservationRequest {
                            idempotency_key: format!("{id}/commit"),
                            reservation_id: reservation.reservation_id,
                        })
                        .await
                        .unwrap();
                    payments
                        .capture(payments_pb::CaptureRequest {
                            idempotency_key: format!("{id}/capture"),
                            authorization_id: auth.authorization_id,
                            payee_account_id: merchant,
                        })
                        .await
                        .unwrap();
                }
            }
        };
        let place = {
            let (orders, accounts) = (orders.clone(), accounts.clone());
            move |i: usize| {
                let mut orders = orders.clone();
                let account = accounts[i % ACCOUNTS].clone();
                async move {
                    let order = orders
                        .place_order(order_request(
                            &format!("bench-{round}-{i}"),
                            &format!("customer-{}", i % ACCOUNTS),
                            &account,
                            &[(format!("BENCH-{}", i % SKUS).as_str(), 1)],
                        ))
                        .await
                        .unwrap()
                        .into_inner()
                        .order
                        .unwrap();
                    assert_eq!(order.status(), orders_pb::OrderStatus::Confirmed);
                }
            }
        };
        let (mut baselines, mut sagas) = (Vec::new(), Vec::new());
        for rep in 0..REPS {
            baselines.push(phase(&mesh, concurrency, rep * ORDERS, direct.clone()).await);
            let place = place.clone();
            sagas.push(phase(&mesh, concurrency, rep * ORDERS, place).await);
        }
        // Each figure is the median of its repetitions; the ratios are the
        // medians of the per-repetition ratios, with their spread.
        let med = |phases: &[Phase], f: fn(&Phase) -> f64| {
            median(&phases.iter().map(f).collect::<Vec<_>>())
        };
        for (name, p) in [
            ("baseline: the 4 calls, direct", &baselines),
            ("PlaceOrder (saga through orders)", &sagas),
        ] {
            println!(
                "{name:<34} {concurrency:>5} {:>10.0} {:>9.2} {:>9.2} {:>11.2} {:>9.2}/{:.2}/{:.2}",
                med(p, |x| x.per_second),
                med(p, |x| x.p50_ms),
                med(p, |x| x.p99_ms),
                med(p, |x| x.db_ms_per_order),
                med(p, |x| x.xacts_per_order[0]),
                med(p, |x| x.xacts_per_order[1]),
                med(p, |x| x.xacts_per_order[2]),
            );
        }
        // Orders' own commits per order: its database's, less the
        // background its baseline phases show (no order placed there).
        let background = med(&baselines, |x| x.orders_xacts_per_second);
        let own = median(
            &sagas
                .iter()
                .map(|x| x.xacts_per_order[0] - background * x.window_s / x.orders)
                .collect::<Vec<_>>(),
        );
        println!(
            "orders' own commits per order, conc {concurrency}: {own:.2} \
             (less a background of {background:.1} commits/s)"
        );
        let ratios = |f: fn(&Phase) -> f64| {
            let r: Vec<f64> = sagas
                .iter()
                .zip(&baselines)
                .map(|(s, b)| f(s) / f(b))
                .collect();
            ratio_summary(&r)
        };
        println!(
            "ratio saga / baseline, conc {concurrency}: orders/s {}, p50 {}, p99 {}",
            ratios(|x| x.per_second),
            ratios(|x| x.p50_ms),
            ratios(|x| x.p99_ms),
        );
    }
    mesh.check_invariants().await.unwrap();
    mesh.stop().await.unwrap();
}
