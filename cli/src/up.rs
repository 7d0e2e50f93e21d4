//! `weft up`: the whole mesh on this machine. A database (`DATABASE_URL`, or
//! a throwaway PostgreSQL cluster), the development CA and certificates, the
//! local discovery directory, two instances of each service on free ports
//! with the shipped policies, demo data; then a live status table until
//! Ctrl-C drains and stops everything (a second Ctrl-C stops at once).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft::certs::{DevCa, Validity};
use weft::postgres::Cluster;
use weft_discovery::{Discovery, Filter, Resolver};
use weft_mesh::{ClientOptions, IdentityPaths, Metrics, Policy, SpiffeId};
use weft_proto::inventory::v1 as inventory_pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::payments::v1 as payments_pb;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use weft_service::{Config, RegistrationConfig, Transport};

use crate::status::{self, Totals};
use crate::target::{Mesh, MeshArgs};

/// The shipped policies, built in so `weft up` works from any directory.
const POLICIES: [(&str, &str); 3] = [
    (
        "inventory",
        include_str!("../../config/policy/inventory.toml"),
    ),
    (
        "payments",
        include_str!("../../config/policy/payments.toml"),
    ),
    ("orders", include_str!("../../config/policy/orders.toml")),
];

/// `weft up`'s settings.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where certificates, the discovery directory and the log live.
    #[arg(long, env = "WEFT_HOME", default_value = ".weft")]
    pub home: PathBuf,
    /// The trust domain of a CA made now (an existing CA keeps its own).
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "weft.local")]
    pub trust_domain: String,
    /// Instances of each service.
    #[arg(long, env = "WEFT_REPLICAS", default_value_t = 2)]
    pub replicas: usize,
    /// A database to use instead of a throwaway cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Seconds between refreshes of the status table.
    #[arg(long, env = "WEFT_STATUS_EVERY", default_value_t = 2)]
    pub every: u64,
}

/// One running instance.
struct Instance {
    service: &'static str,
    id: String,
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), weft_service::ServeError>>,
    last: Totals,
}

fn step(what: &str) -> Instant {
    eprint!("[up] {what} … ");
    let _ = std::io::stderr().flush();
    Instant::now()
}

fn done(started: Instant) {
    eprintln!("done ({:.1} s)", started.elapsed().as_secs_f64());
}

/// Runs the mesh until Ctrl-C.
pub async fn run(args: UpArgs) -> Result<()> {
    let home = std::path::absolute(&args.home)?;
    std::fs::create_dir_all(&home)?;
    init_logs(&home)?;

    // The database.
    let cluster: Arc<Mutex<Option<Cluster>>> = Arc::new(Mutex::new(None));
    let database: tokio_postgres::Config = match &args.database_url {
        Some(url) => url.parse().context("DATABASE_URL")?,
        None => {
            let t = step("starting a throwaway PostgreSQL cluster");
            let started = tokio::task::spawn_blocking(Cluster::start).await??;
            started.watch_until_exit()?;
            let config = started.config("postgres");
            if let Ok(mut slot) = cluster.lock() {
                *slot = Some(started);
            }
            done(t);
            config
        }
    };
    // A second Ctrl-C stops at once, cluster included.
    let hard_stop = cluster.clone();

    let t = step("certificates");
    let certs = home.join("certs");
    let trust_domain = ensure_certs(&certs, &args.trust_domain)?;
    done(t);

    let discovery_dir = home.join("discovery");
    std::fs::create_dir_all(&discovery_dir)?;
    let setting = format!("local://{}", discovery_dir.display());
    let mesh_args = MeshArgs {
        discovery: Some(setting.clone()),
        certs: certs.clone(),
        operator: "dev".into(),
    };

    let mut instances = Vec::new();
    let t = step(&format!(
        "starting {} inventory and {} payments instances (migrating the database)",
        args.replicas, args.replicas
    ));
    for service in ["inventory", "payments"] {
        for n in 1..=args.replicas {
            instances
                .push(start(service, n, &certs, &trust_domain, &setting, &database, None).await?);
        }
    }
    wait_healthy(&setting, "inventory", args.replicas, &instances).await?;
    wait_healthy(&setting, "payments", args.replicas, &instances).await?;
    done(t);

    let t = step("demo data (products, accounts)");
    let mesh = Mesh::connect(&mesh_args).await?;
    let demo = demo_data(&mesh).await?;
    done(t);

    let t = step(&format!("starting {} orders instances", args.replicas));
    for n in 1..=args.replicas {
        instances.push(
            start(
                "orders",
                n,
                &certs,
                &trust_domain,
                &setting,
                &database,
                Some(&demo.merchant),
            )
            .await?,
        );
    }
    wait_healthy(&setting, "orders", args.replicas, &instances).await?;
    done(t);

    // Listening for Ctrl-C before saying it stops everything.
    let signal = next_interrupt()?;
    tokio::pin!(signal);
    print_ready(&home, &certs, &instances, &demo);

    let tty = std::io::stdout().is_terminal();
    let mut last_tick = Instant::now();
    let discovery = Discovery::from_setting(&setting).await?;
    let watches: Vec<_> = ["inventory", "payments", "orders"]
        .into_iter()
        .map(|s| discovery.watch(s, &Filter::any()))
        .collect::<Result<_, _>>()?;
    loop {
        tokio::select! {
            _ = &mut signal => break,
            () = tokio::time::sleep(Duration::from_secs(args.every.max(1))) => {
                let seconds = last_tick.elapsed().as_secs_f64();
                last_tick = Instant::now();
                let healthy: Vec<(String, bool)> = watches
                    .iter()
                    .flat_map(|w| w.borrow().endpoints.iter().map(|e| (e.id.clone(), e.healthy)).collect::<Vec<_>>())
                    .collect();
                print_status(&mut instances, &healthy, seconds, tty);
            }
        }
    }

    // Listening before saying so: a second Ctrl-C right after the message
    // must not be missed.
    let second = next_interrupt()?;
    eprintln!("\n[up] stopping: draining every instance (Ctrl-C again to stop at once)");
    tokio::spawn(async move {
        if second.await {
            eprintln!("[up] stopping at once");
            if let Ok(mut slot) = hard_stop.lock()
                && let Some(mut c) = slot.take()
            {
                let _ = c.stop();
            }
            std::process::exit(130);
        }
    });
    // Orders first: it calls the others while it drains.
    for wave in ["orders", "inventory", "payments"] {
        let t = step(&format!("stopping {wave}"));
        for i in instances.iter_mut().filter(|i| i.service == wave) {
            if let Some(stop) = i.stop.take() {
                let _ = stop.send(());
            }
        }
        for i in instances.iter_mut().filter(|i| i.service == wave) {
            match tokio::time::timeout(Duration::from_secs(30), &mut i.task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("\n[up] {} stopped with an error: {e}", i.id),
                Ok(Err(e)) => eprintln!("\n[up] {} failed: {e}", i.id),
                Err(_) => {
                    eprintln!("\n[up] {} did not stop within 30 s", i.id);
                    i.task.abort();
                }
            }
        }
        done(t);
    }
    let taken = cluster.lock().ok().and_then(|mut c| c.take());
    if let Some(mut c) = taken {
        let t = step("removing the PostgreSQL cluster");
        tokio::task::spawn_blocking(move || c.stop()).await??;
        done(t);
    }
    eprintln!("[up] stopped");
    Ok(())
}

/// Resolves (true) on the next SIGINT; the listener is registered now, not
/// when first polled, so a Ctrl-C right after this call is not missed.
#[cfg(unix)]
fn next_interrupt() -> Result<impl std::future::Future<Output = bool>> {
    let mut signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move { signal.recv().await.is_some() })
}

/// Resolves (true) on the next Ctrl-C.
#[cfg(not(unix))]
fn next_interrupt() -> Result<impl std::future::Future<Output = bool>> {
    Ok(async { tokio::signal::ctrl_c().await.is_ok() })
}

/// Logs of every instance go to HOME/up.log, keeping the terminal for the
/// status table.
fn init_logs(home: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("up.log"))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .init();
    Ok(())
}

/// The CA (made if absent; its trust domain wins) and certificates for the
/// three services and the `dev` operator.
fn ensure_certs(dir: &Path, trust_domain: &str) -> Result<String> {
    let ca = if dir.join("ca.pem").is_file() {
        DevCa::load(dir).with_context(|| format!("loading the CA in {}", dir.display()))?
    } else {
        let ca = DevCa::create(trust_domain, Validity::days(3650))?;
        ca.write(dir, false)?;
        ca
    };
    // An existing operator certificate tells the CA's trust domain.
    let operator = IdentityPaths {
        cert: dir.join("operator-dev.pem"),
        key: dir.join("operator-dev.key"),
        trust_bundle: dir.join("ca.pem"),
    };
    let td = match weft_mesh::CertStore::load(operator, Duration::from_secs(3600)) {
        Ok(store) => store.current().id.trust_domain().to_owned(),
        Err(_) => trust_domain.to_owned(),
    };
    let sans = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    for service in ["inventory", "payments", "orders"] {
        if !dir.join(format!("{service}.pem")).is_file() {
            let issued = ca.issue(&SpiffeId::service(&td, service)?, Validity::days(30), &sans)?;
            issued.write(dir, service, false)?;
        }
    }
    if !dir.join("operator-dev.pem").is_file() {
        let issued = ca.issue(&SpiffeId::operator(&td, "dev")?, Validity::days(30), &[])?;
        issued.write(dir, "operator-dev", false)?;
    }
    Ok(td)
}

async fn start(
    service: &'static str,
    n: usize,
    certs: &Path,
    trust_domain: &str,
    setting: &str,
    database: &tokio_postgres::Config,
    merchant: Option<&str>,
) -> Result<Instance> {
    let policy_text = POLICIES
        .iter()
        .find(|(s, _)| *s == service)
        .map(|(_, text)| text.replace("spiffe://weft.local/", &format!("spiffe://{trust_domain}/")))
        .context("no policy")?;
    let identity = IdentityPaths {
        cert: certs.join(format!("{service}.pem")),
        key: certs.join(format!("{service}.key")),
        trust_bundle: certs.join("ca.pem"),
    };
    let transport = Transport::Mtls {
        identity: weft_mesh::IdentitySource::Files(identity),
        policy: Some(Policy::from_toml(&policy_text)?),
        reload_every: Duration::from_secs(5),
    };
    let id = format!("{service}-{n}");
    let mut config = Config::new(transport, database.clone());
    config.pool_size = 8;
    config.registration = Some(RegistrationConfig {
        discovery: setting.to_owned(),
        instance_id: id.clone(),
        advertise: None,
        attributes: [("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())].into(),
    });
    config.drain = weft_mesh::DrainConfig {
        drain_period: Duration::from_millis(500),
        grace_period: Duration::from_secs(10),
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::new());
    config.metrics = metrics.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let task = match (service, merchant) {
        ("inventory", _) => tokio::spawn(weft_inventory::run(listener, config, shutdown)),
        ("payments", _) => tokio::spawn(weft_payments::run(listener, config, shutdown)),
        ("orders", Some(merchant)) => {
            let mut orders =
                weft_orders::OrdersConfig::new(config, setting.to_owned(), merchant.to_owned());
            orders.upstream.client.metrics = metrics.clone();
            tokio::spawn(weft_orders::run(listener, orders, shutdown))
        }
        _ => bail!("cannot start {service}"),
    };
    Ok(Instance {
        service,
        id,
        addr,
        metrics,
        stop: Some(stop),
        task,
        last: Totals::default(),
    })
}

async fn wait_healthy(
    setting: &str,
    service: &str,
    count: usize,
    instances: &[Instance],
) -> Result<()> {
    let discovery = Discovery::from_setting(setting).await?;
    let mut rx = discovery.watch(service, &Filter::any())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let healthy = rx.borrow().endpoints.iter().filter(|e| e.healthy).count();
        if healthy >= count {
            return Ok(());
        }
        if let Some(i) = instances.iter().find(|i| i.task.is_finished()) {
            bail!(
                "{} exited while starting (see the log in the weft home directory)",
                i.id
            );
        }
        if Instant::now() > deadline {
            bail!("{service}: {healthy} of {count} instances healthy after 60 s");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

/// The demo shop's ids.
struct Demo {
    merchant: String,
    alice: String,
    bob: String,
}

async fn demo_data(mesh: &Mesh) -> Result<Demo> {
    let mut inventory =
        InventoryServiceClient::new(mesh.channel("inventory", ClientOptions::default())?);
    for (sku, name, price, stock) in [
        ("WIDGET-1", "Widget", 1299, 100),
        ("GADGET-1", "Gadget", 2499, 50),
        ("GIZMO-1", "Gizmo", 499, 1000),
    ] {
        let created = inventory
            .create_product(inventory_pb::CreateProductRequest {
                idempotency_key: format!("demo-product-{sku}"),
                sku: sku.into(),
                name: name.into(),
                unit_price: Some(weft_proto::money::v1::Money {
                    amount_minor: price,
                    currency_code: "EUR".into(),
                }),
                initial_stock: stock,
            })
            .await;
        match created {
            Ok(_) => {}
            // A database kept from an earlier run has them already.
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => bail!("creating {sku}: {:?} {}", s.code(), s.message()),
        }
    }
    let mut payments =
        PaymentsServiceClient::new(mesh.channel("payments", ClientOptions::default())?);
    let mut account = async |owner: &str, deposit: i64| -> Result<String> {
        let opened = payments
            .open_account(payments_pb::OpenAccountRequest {
                idempotency_key: format!("demo-account-{owner}"),
                owner: owner.into(),
                currency_code: "EUR".into(),
                credit_limit_minor: 0,
            })
            .await
            .map_err(|s| anyhow::anyhow!("opening {owner}'s account: {}", s.message()))?
            .into_inner()
            .account
            .context("no account")?;
        if deposit > 0 {
            payments
                .deposit(payments_pb::DepositRequest {
                    idempotency_key: format!("demo-deposit-{owner}"),
                    account_id: opened.account_id.clone(),
                    amount: Some(weft_proto::money::v1::Money {
                        amount_minor: deposit,
                        currency_code: "EUR".into(),
                    }),
                })
                .await
                .map_err(|s| anyhow::anyhow!("funding {owner}'s account: {}", s.message()))?;
        }
        Ok(opened.account_id)
    };
    Ok(Demo {
        merchant: account("merchant", 0).await?,
        alice: account("alice", 10_000_000).await?,
        bob: account("bob", 5_000).await?,
    })
}

fn print_ready(home: &Path, certs: &Path, instances: &[Instance], demo: &Demo) {
    let addr = |service: &str| {
        instances
            .iter()
            .find(|i| i.service == service)
            .map(|i| i.addr.to_string())
            .unwrap_or_default()
    };
    let tls = format!(
        "-cacert {c}/ca.pem -cert {c}/operator-dev.pem -key {c}/operator-dev.key",
        c = certs.display()
    );
    let orders = addr("orders");
    println!(
        "[up] ready: the mesh is up over mTLS; logs in {}/up.log",
        home.display()
    );
    println!(
        "[up] demo accounts: alice {} (100,000.00 EUR), bob {} (50.00 EUR); products WIDGET-1, GADGET-1, GIZMO-1",
        demo.alice, demo.bob
    );
    println!("[up] try (grpcurl):");
    println!("  grpcurl {tls} {orders} list");
    println!(
        "  grpcurl {tls} -d '{{\"idempotency_key\":\"order-1\",\"customer_id\":\"alice\",\"payment_account_id\":\"{}\",\"lines\":[{{\"sku\":\"WIDGET-1\",\"quantity\":\"2\"}}]}}' {orders} weft.orders.v1.OrdersService/PlaceOrder",
        demo.alice
    );
    println!(
        "  grpcurl {tls} -d '{{\"customer_id\":\"alice\"}}' {orders} weft.orders.v1.OrdersService/ListOrders"
    );
    println!("[up] or with weft, by service name through discovery (from this directory):");
    println!(
        "  weft call orders/PlaceOrder -d '{{\"idempotency_key\":\"order-2\",\"customer_id\":\"bob\",\"payment_account_id\":\"{}\",\"lines\":[{{\"sku\":\"GIZMO-1\",\"quantity\":\"1\"}}]}}'",
        demo.bob
    );
    println!("  weft ls; weft health; weft load --account {}", demo.alice);
    println!("[up] Ctrl-C drains and stops everything");
    if std::io::stdout().is_terminal() {
        // The status table is redrawn from here.
        print!("\x1b[s");
    }
    let _ = std::io::stdout().flush();
}

fn print_status(instances: &mut [Instance], healthy: &[(String, bool)], seconds: f64, tty: bool) {
    let mut out = String::new();
    if tty {
        // Redraw in place, under the ready message: back to where it ended
        // (saved then), clear below.
        out.push_str("\x1b[u\x1b[J");
    }
    out.push_str(&format!(
        "{:<10} {:<12} {:<22} {:<10} {:>8} {:>9} {:>9}\n",
        "SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "REQ/S", "P50", "P99"
    ));
    for i in instances.iter_mut() {
        let now = status::totals(&i.metrics.render());
        let w = status::window(&i.last, &now, seconds);
        i.last = now;
        let health = match healthy.iter().find(|(id, _)| *id == i.id) {
            Some((_, true)) => "healthy",
            Some((_, false)) => "unhealthy",
            None => "gone",
        };
        let health = if i.task.is_finished() {
            "exited"
        } else {
            health
        };
        out.push_str(&format!(
            "{:<10} {:<12} {:<22} {:<10} {:>8.1} {:>9} {:>9}\n",
            i.service,
            i.id,
            i.addr.to_string(),
            health,
            w.rate,
            status::ms(w.p50_ms),
            status::ms(w.p99_ms)
        ));
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}
