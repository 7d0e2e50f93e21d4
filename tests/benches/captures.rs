//! Captures into one payee against captures spread over sixteen, printed:
//! authorize-and-capture pairs per second through the mesh (two payments
//! instances over mTLS, PostgreSQL with durable commits), from 64 paying
//! accounts at concurrency 32, all paying one merchant or sixteen in turn.
//! A payee's incoming money is the row every capture into it writes; the
//! ratio says how much one busy merchant costs. Each row runs one payee and
//! sixteen in turn, `REPS` times each, interleaved, and prints the median
//! ratio with its spread.
//! Run: `cargo bench -p weft-tests --bench captures`.

// Bench code: a panic is a failed run with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use weft_mesh::{ClientOptions, MeshChannel};
use weft_proto::payments::v1 as pb;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use weft_tests::bench::{self, median, ratio_summary};
use weft_tests::mesh::{Mesh, eur};

/// Pairs per run.
const PAIRS: usize = 1_000;
/// Paying accounts.
const PAYERS: usize = 64;
/// Calls in flight.
const CONCURRENCY: usize = 32;
/// Interleaved repetitions of each side.
const REPS: usize = 5;

fn main() {
    bench::run(run()).unwrap();
}

/// Pairs per second, and p99 of one pair in ms, paying `payees` in turn.
async fn phase(
    payments: &PaymentsServiceClient<MeshChannel>,
    payers: &Arc<Vec<String>>,
    payees: &Arc<Vec<String>>,
    run: &str,
) -> (f64, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (mut payments, payers, payees, next) = (
                payments.clone(),
                payers.clone(),
                payees.clone(),
                next.clone(),
            );
            let run = run.to_owned();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= PAIRS {
                        return latencies;
                    }
                    let began = Instant::now();
                    let auth = payments
                        .authorize(pb::AuthorizeRequest {
                            idempotency_key: format!("{run}-auth-{i}"),
                            account_id: payers[i % payers.len()].clone(),
                            amount: Some(eur(100)),
                            reference: format!("{run}-{i}"),
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .authorization
                        .unwrap();
                    payments
                        .capture(pb::CaptureRequest {
                            idempotency_key: format!("{run}-capture-{i}"),
                            authorization_id: auth.authorization_id,
                            payee_account_id: payees[i % payees.len()].clone(),
                        })
                        .await
                        .unwrap();
                    latencies.push(began.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let p99 = all[((all.len() as f64 * 0.99) as usize).min(all.len() - 1)];
    (all.len() as f64 / elapsed, p99.as_secs_f64() * 1e3)
}

async fn run() {
    let mesh = Mesh::without_orders().await.unwrap();
    let mut payers = Vec::new();
    for n in 0..PAYERS {
        payers.push(
            mesh.open_account(&format!("payer-{n}"), 1_000_000_000)
                .await
                .unwrap(),
        );
    }
    let mut payees = Vec::new();
    for n in 0..16 {
        payees.push(
            mesh.open_account(&format!("merchant-{n}"), 0)
                .await
                .unwrap(),
        );
    }
    let payers = Arc::new(payers);
    let one = Arc::new(payees[..1].to_vec());
    let sixteen = Arc::new(payees);
    // As orders, the one caller the policy lets capture.
    let payments = PaymentsServiceClient::new(
        mesh.channel_as("payments", mesh.orders_identity(), ClientOptions::default())
            .await
            .unwrap(),
    );
    let durable = {
        let db = mesh.db.connect().await.unwrap();
        let fsync: String = db.query_one("SHOW fsync", &[]).await.unwrap().get(0);
        let commit: String = db
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap()
            .get(0);
        format!("fsync {fsync}, synchronous_commit {commit}")
    };
    // Warm: connections, plans, the payees' first rows.
    phase(&payments, &payers, &sixteen, "warm").await;

    println!(
        "captures bench: {PAIRS} authorize+capture pairs per run from {PAYERS} payers at concurrency \
         {CONCURRENCY}, 2 payments instances over mTLS, {durable}"
    );
    let (mut r1, mut r16, mut ratios, mut p1, mut p16) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..REPS {
        let a = phase(&payments, &payers, &one, &format!("one-{rep}")).await;
        let b = phase(&payments, &payers, &sixteen, &format!("sixteen-{rep}")).await;
        r1.push(a.0);
        r16.push(b.0);
        p1.push(a.1);
        p16.push(b.1);
        ratios.push(a.0 / b.0);
    }
    println!("| payees | pairs/s (median of {REPS}) | p99 ms (median) |");
    println!("| --- | --- | --- |");
    println!("| 1 | {:.0} | {:.1} |", median(&r1), median(&p1));
    println!("| 16 | {:.0} | {:.1} |", median(&r16), median(&p16));
    println!(
        "one payee / sixteen: median (min–max) {}",
        ratio_summary(&ratios)
    );
    mesh.check_invariants().await.unwrap();
}
