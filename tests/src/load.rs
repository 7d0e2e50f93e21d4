//! Steady load for the mesh-client tests: a seeded product, workers calling
//! GetStock until told to stop, and the wait for endpoints to be usable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use weft_mesh::MeshChannel;
use weft_proto::inventory::v1 as pb;
use weft_proto::money::v1::Money;

/// An inventory client over the mesh.
pub type Client = pb::inventory_service_client::InventoryServiceClient<MeshChannel>;

/// Held by a test while it measures how calls are shared among endpoints,
/// and by the tests of its binary that load the machine (steady calls,
/// restarts): those run before or after it, not beside it, so their work
/// adds no scheduling delay to the latencies the balancer weighs. One delayed answer raises an endpoint's peak estimate at once,
/// and the estimate takes seconds to decay, which would skew the shares.
pub async fn measuring_shares() -> tokio::sync::MutexGuard<'static, ()> {
    static SHARES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SHARES.lock().await
}

/// Creates product "A" with 5 units.
pub async fn seed(client: &mut Client) -> Result<()> {
    client
        .create_product(pb::CreateProductRequest {
            idempotency_key: "seed".into(),
            sku: "A".into(),
            name: "A".into(),
            unit_price: Some(Money {
                amount_minor: 1,
                currency_code: "EUR".into(),
            }),
            initial_stock: 5,
        })
        .await?;
    Ok(())
}

/// Workers calling GetStock("A") until `running` is cleared (or 30 s pass);
/// each yields (calls, failures).
pub fn get_stock_load(
    client: &Client,
    workers: usize,
    running: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..workers)
        .map(|_| {
            let (mut client, running) = (client.clone(), running.clone());
            tokio::spawn(async move {
                let (mut calls, mut failures) = (0, 0);
                let started = Instant::now();
                while running.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30)
                {
                    calls += 1;
                    if let Err(e) = client
                        .get_stock(pb::GetStockRequest {
                            skus: vec!["A".into()],
                        })
                        .await
                    {
                        if failures < 3 {
                            eprintln!("failed call: {e:?}");
                        }
                        failures += 1;
                    }
                }
                (calls, failures)
            })
        })
        .collect()
}

/// Stops the workers and sums (calls, failures).
pub async fn finish(
    running: &AtomicBool,
    workers: Vec<tokio::task::JoinHandle<(u64, u64)>>,
) -> Result<(u64, u64)> {
    running.store(false, Ordering::Relaxed);
    let mut totals = (0, 0);
    for w in workers {
        let (c, f) = w.await?;
        totals.0 += c;
        totals.1 += f;
    }
    Ok(totals)
}

/// Calls sent to each endpoint of `channel` so far, by discovery id.
pub fn calls_by_id(channel: &MeshChannel) -> std::collections::HashMap<String, u64> {
    channel
        .endpoints()
        .iter()
        .map(|e| (e.id.clone(), e.calls.load(Ordering::Relaxed)))
        .collect()
}

/// Waits until `n` endpoints of `channel` are available, failing after 15 s.
pub async fn wait_for_endpoints(channel: &MeshChannel, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while channel.endpoints().iter().filter(|e| e.available()).count() < n {
        if Instant::now() > deadline {
            bail!("{n} endpoints never became available");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What a kill under load showed: the calls and failures of the load, and the
/// victim's call counter when it was killed, 1 s later and 2.5 s later.
#[derive(Debug, Clone, Copy)]
pub struct KillReport {
    /// Calls made by the workers.
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// The victim's calls when it was killed.
    pub before_kill: u64,
    /// The victim's calls 1 s after.
    pub after_one_second: u64,
    /// The victim's calls 2.5 s after.
    pub later: u64,
}

/// Seeds product "A", runs 4 GetStock workers through `channel`, calls
/// `kill` after 800 ms, and watches endpoint `victim`'s counter (kept even
/// after the endpoint leaves the pool).
pub async fn kill_under_load(
    channel: &MeshChannel,
    victim: &str,
    kill: impl FnOnce(),
) -> Result<KillReport> {
    let mut client = Client::new(channel.clone());
    seed(&mut client).await?;
    let Some(victim) = channel.endpoints().iter().find(|e| e.id == victim).cloned() else {
        bail!("no endpoint {victim}");
    };
    let running = Arc::new(AtomicBool::new(true));
    let workers = get_stock_load(&client, 4, &running);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_kill = victim.calls.load(Ordering::Relaxed);
    kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_one_second = victim.calls.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = victim.calls.load(Ordering::Relaxed);
    let (calls, failures) = finish(&running, workers).await?;
    Ok(KillReport {
        calls,
        failures,
        before_kill,
        after_one_second,
        later,
    })
}
