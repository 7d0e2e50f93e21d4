//! `weft up`: a mesh on this machine, from a manifest (`weft.toml`, see
//! [`weft::manifest`]) or, without one, Weft's own demo. It makes a
//! database (`DATABASE_URL`, or a throwaway PostgreSQL cluster), the
//! development CA and a certificate per service, each service's policy and
//! the local discovery directory; then starts every instance as a process of
//! its own, supervised (restarted with backoff when it exits unasked), each
//! service once those it depends on are healthy; seeds the demo shop when
//! asked; and shows a live status table until Ctrl-C drains and stops
//! everything, dependents first (a second Ctrl-C stops at once). While it
//! runs, `weft logs`, `weft kill` and `weft restart` work on its instances
//! through its control socket.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::sync::{mpsc, watch};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use weft::certs::{DevCa, Validity};
use weft::control::{self, Control, Request};
use weft::manifest::{Manifest, Program, Seed};
use weft::postgres::Cluster;
use weft::supervise::{Instance, Phase, Spec};
use weft_discovery::{Discovery, Filter, Resolver, Snapshot};
use weft_mesh::{CertStore, ClientOptions, IdentityPaths, SpiffeId};
use weft_proto::inventory::v1 as inventory_pb;
use weft_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use weft_proto::payments::v1 as payments_pb;
use weft_proto::payments::v1::payments_service_client::PaymentsServiceClient;

use crate::status::{self, Totals};
use crate::target::{Mesh, MeshArgs};

/// How long a service's instances may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Events kept under the status table on a terminal.
const EVENTS_SHOWN: usize = 6;

/// `weft up`'s settings.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where certificates, policies, the discovery directory, the control
    /// socket and the logs live.
    #[arg(long, env = "WEFT_HOME", default_value = ".weft")]
    pub home: PathBuf,
    /// The manifest to run (default: weft.toml here if there is one, else
    /// Weft's demo).
    #[arg(long, short = 'f', env = "WEFT_MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// The trust domain of a CA made now (default: the manifest's, else
    /// weft.local; an existing CA keeps its own).
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Instances of every service, over what the manifest says.
    #[arg(long, env = "WEFT_REPLICAS")]
    pub replicas: Option<usize>,
    /// A database to use instead of a throwaway cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Seconds between refreshes of the status table.
    #[arg(long, env = "WEFT_STATUS_EVERY", default_value_t = 2)]
    pub every: u64,
}

/// `weft logs`' settings.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The `weft up` home directory.
    #[arg(long, env = "WEFT_HOME", default_value = ".weft")]
    pub home: PathBuf,
    /// The instance (`inventory-1`; `weft up` lists them).
    pub instance: String,
    /// Keep printing what it writes, until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, short = 'n')]
    pub tail: Option<usize>,
}

/// Where the `weft up` to ask is.
#[derive(Debug, Args)]
pub struct HomeArgs {
    /// The `weft up` home directory.
    #[arg(long, env = "WEFT_HOME", default_value = ".weft")]
    pub home: PathBuf,
}

fn step(what: &str) -> Instant {
    eprint!("[up] {what} … ");
    let _ = std::io::stderr().flush();
    Instant::now()
}

fn done(started: Instant) {
    eprintln!("done ({:.1} s)", started.elapsed().as_secs_f64());
}

/// The running mesh: its instances and how to tell they are healthy.
struct Supervised {
    /// Every instance, in start order.
    instances: Vec<Instance>,
    /// Discovery, watched per service.
    watches: HashMap<String, watch::Receiver<Snapshot>>,
    /// The operator's certificate, for asking instances' health directly.
    operator: CertStore,
    trust_domain: String,
    /// One rolling restart at a time: two would take down two instances.
    restarting: tokio::sync::Mutex<()>,
}

impl Supervised {
    fn of(&self, service: &str) -> impl Iterator<Item = &Instance> {
        self.instances
            .iter()
            .filter(move |i| i.spec.service == service)
    }

    /// Waits until `instance` runs, answers SERVING itself and is listed
    /// healthy in discovery (so clients pick it).
    async fn wait_ready(&self, instance: &Instance) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let service = &instance.spec.service;
        let watch = self
            .watches
            .get(service)
            .context("no discovery watch for the service")?;
        let expected = SpiffeId::service(&self.trust_domain, service)?;
        loop {
            let running = matches!(instance.status().phase, Phase::Running { .. });
            let listed = watch
                .borrow()
                .endpoints
                .iter()
                .any(|e| e.id == instance.spec.id && e.healthy);
            if running && listed && self.serving(instance, &expected).await {
                return Ok(());
            }
            if matches!(instance.status().phase, Phase::Stopped) {
                bail!(
                    "{} could not start: {} (its log: weft logs {})",
                    instance.spec.id,
                    instance.status().last_exit.unwrap_or_default(),
                    instance.spec.id
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} is not healthy after {} s (its log: weft logs {}{})",
                    instance.spec.id,
                    READY_TIMEOUT.as_secs(),
                    instance.spec.id,
                    instance
                        .status()
                        .last_exit
                        .map(|e| format!("; it last ended: {e}"))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks the instance itself whether it serves.
    async fn serving(&self, instance: &Instance, expected: &SpiffeId) -> bool {
        let Ok(tls) = weft_mesh::client_config(&self.operator, expected.clone()) else {
            return false;
        };
        let Ok(channel) = weft_mesh::mtls_channel(instance.spec.listen, tls) else {
            return false;
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            HealthClient::new(channel).check(HealthCheckRequest::default()),
        )
        .await;
        matches!(answer, Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving)
    }

    async fn wait_service(&self, service: &str) -> Result<()> {
        for instance in self.of(service) {
            self.wait_ready(instance).await?;
        }
        Ok(())
    }
}

impl Control for Supervised {
    async fn handle(
        &self,
        request: Request,
        progress: mpsc::UnboundedSender<String>,
    ) -> Result<String, String> {
        match request {
            Request::Kill(id) => {
                let instance = self
                    .instances
                    .iter()
                    .find(|i| i.spec.id == id)
                    .ok_or_else(|| format!("no instance {id} (weft up's table lists them)"))?;
                let pid = instance.kill().await?;
                instance.note(format!("{id} killed by weft kill (pid {pid})"));
                Ok(format!(
                    "killed {id} (pid {pid}); the supervisor restarts it"
                ))
            }
            Request::Restart(service) => {
                let instances: Vec<&Instance> = self.of(&service).collect();
                if instances.is_empty() {
                    return Err(format!("no service {service} in this mesh"));
                }
                let _one_at_a_time = self.restarting.lock().await;
                for instance in &instances {
                    let id = &instance.spec.id;
                    let _ = progress.send(format!("{id}: draining"));
                    instance.restart().await?;
                    let _ = progress.send(format!("{id}: started again, waiting until healthy"));
                    self.wait_ready(instance).await.map_err(|e| e.to_string())?;
                    instance.note(format!("{id} restarted by weft restart"));
                    let _ = progress.send(format!("{id}: healthy"));
                }
                Ok(format!(
                    "restarted {} instance(s) of {service}, one at a time",
                    instances.len()
                ))
            }
        }
    }
}

/// Runs the mesh until Ctrl-C.
pub async fn run(args: UpArgs) -> Result<()> {
    let home = std::path::absolute(&args.home)?;
    std::fs::create_dir_all(home.join("logs"))?;
    init_logs(&home)?;
    let manifest = load_manifest(&args)?;
    // Refuse a second weft up in this home before touching anything.
    let control_listener = control::bind(&home).await?;

    let programs = resolve_programs(&manifest).await?;

    // The database.
    let cluster: Arc<Mutex<Option<Cluster>>> = Arc::new(Mutex::new(None));
    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            let t = step("starting a throwaway PostgreSQL cluster");
            let started = tokio::task::spawn_blocking(Cluster::start).await??;
            started.watch_until_exit()?;
            let url = started.url("postgres");
            if let Ok(mut slot) = cluster.lock() {
                *slot = Some(started);
            }
            done(t);
            url
        }
    };

    let t = step("certificates and policies");
    let certs = home.join("certs");
    let names: Vec<&str> = manifest.services.iter().map(|s| s.name.as_str()).collect();
    let wanted_domain = args
        .trust_domain
        .clone()
        .or_else(|| manifest.trust_domain.clone())
        .unwrap_or_else(|| "weft.local".to_owned());
    let trust_domain = ensure_certs(&certs, &wanted_domain, &names)?;
    let policies = write_policies(&home, &manifest, &trust_domain)?;
    done(t);

    // A directory of this run's own: records left by an earlier run that
    // was killed would list instances that are gone.
    let discovery_dir = home.join("discovery");
    if discovery_dir.exists() {
        std::fs::remove_dir_all(&discovery_dir)?;
    }
    std::fs::create_dir_all(&discovery_dir)?;
    let setting = format!("local://{}", discovery_dir.display());
    let mesh_args = MeshArgs {
        discovery: Some(setting.clone()),
        certs: certs.clone(),
        operator: "dev".into(),
    };
    let discovery = Discovery::from_setting(&setting).await?;
    let watches = names
        .iter()
        .map(|s| Ok(((*s).to_owned(), discovery.watch(s, &Filter::any())?)))
        .collect::<Result<HashMap<_, _>>>()?;
    let operator = CertStore::load(
        IdentityPaths {
            cert: certs.join("operator-dev.pem"),
            key: certs.join("operator-dev.key"),
            trust_bundle: certs.join("ca.pem"),
        },
        Duration::from_secs(3600),
    )?;

    let (events, mut event_rx) = mpsc::unbounded_channel::<String>();
    let mut supervised = Supervised {
        instances: Vec::new(),
        watches,
        operator,
        trust_domain: trust_domain.clone(),
        restarting: tokio::sync::Mutex::new(()),
    };
    // From here on, any failure stops what was started.
    let started = start_all(
        &manifest,
        &programs,
        &mut supervised,
        &events,
        Environment {
            home: &home,
            certs: &certs,
            policies: &policies,
            setting: &setting,
            database_url: &database_url,
        },
        &mesh_args,
    )
    .await;
    let demo = match started {
        Ok(demo) => demo,
        Err(e) => {
            eprintln!();
            stop_all(&manifest, &supervised).await;
            stop_cluster(&cluster).await;
            return Err(e);
        }
    };

    // Listening for Ctrl-C before saying it stops everything.
    let signal = next_interrupt()?;
    tokio::pin!(signal);
    let supervised = Arc::new(supervised);
    let control_task = tokio::spawn(control::serve(control_listener, supervised.clone()));
    print_ready(&home, &certs, &supervised, demo.as_ref());

    let tty = std::io::stdout().is_terminal();
    let mut last_tick = Instant::now();
    let mut last: HashMap<String, Totals> = HashMap::new();
    let mut recent: Vec<String> = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(args.every.max(1)));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut signal => break,
            Some(event) = event_rx.recv() => {
                tracing::info!("{event}");
                if tty {
                    recent.push(event);
                    let excess = recent.len().saturating_sub(EVENTS_SHOWN);
                    recent.drain(..excess);
                } else {
                    println!("[up] {event}");
                }
            }
            _ = ticker.tick() => {
                let seconds = last_tick.elapsed().as_secs_f64();
                last_tick = Instant::now();
                let scraped = scrape_all(&supervised.instances).await;
                print_status(&supervised, &scraped, &mut last, seconds, tty, &recent);
            }
        }
    }

    // Listening before saying so: a second Ctrl-C right after the message
    // must not be missed.
    let second = next_interrupt()?;
    eprintln!("\n[up] stopping: draining every instance (Ctrl-C again to stop at once)");
    let pids: Vec<u32> = supervised
        .instances
        .iter()
        .filter_map(|i| match i.status().phase {
            Phase::Running { pid } => Some(pid),
            _ => None,
        })
        .collect();
    let hard_stop = cluster.clone();
    tokio::spawn(async move {
        if second.await {
            eprintln!("[up] stopping at once");
            for pid in pids {
                let _ = weft::supervise::signal(pid, rustix::process::Signal::KILL);
            }
            if let Ok(mut slot) = hard_stop.lock()
                && let Some(mut c) = slot.take()
            {
                let _ = c.stop();
            }
            std::process::exit(130);
        }
    });
    control_task.abort();
    let _ = std::fs::remove_file(control::socket_path(&home));
    stop_all(&manifest, &supervised).await;
    stop_cluster(&cluster).await;
    eprintln!("[up] stopped");
    Ok(())
}

/// The manifest asked for, `weft.toml` here, or the demo; `--replicas`
/// applied.
fn load_manifest(args: &UpArgs) -> Result<Manifest> {
    let here = Path::new("weft.toml");
    let mut manifest = match &args.manifest {
        Some(path) => {
            Manifest::load(path).with_context(|| format!("manifest {}", path.display()))?
        }
        None if here.is_file() => {
            eprintln!("[up] running ./weft.toml");
            Manifest::load(here).context("manifest ./weft.toml")?
        }
        None => Manifest::demo()?,
    };
    if let Some(n) = args.replicas {
        manifest.set_replicas(n).context("--replicas")?;
    }
    Ok(manifest)
}

/// Finds each service's program: a path, a name beside this binary or on
/// PATH, or a cargo package built now.
async fn resolve_programs(manifest: &Manifest) -> Result<HashMap<String, PathBuf>> {
    let mut programs = HashMap::new();
    for s in &manifest.services {
        let path = match &s.program {
            Program::Binary(name) => match find_binary(name, &manifest.dir) {
                Ok(path) => path,
                // Weft's own services, from the workspace weft was built in
                // (`cargo run -p weft -- up` builds weft alone).
                Err(_) if is_weft_service(name) && workspace().is_some() => {
                    let t = step(&format!("building {name} (cargo build)"));
                    let dir = workspace().context("the workspace")?;
                    let built = cargo_build(name, name, &dir).await?;
                    done(t);
                    built
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("service {}: binary {name}", s.name));
                }
            },
            Program::Package { package, bin } => {
                let t = step(&format!("building {package} (cargo build)"));
                let built = cargo_build(package, bin, &manifest.dir)
                    .await
                    .with_context(|| format!("service {}: package {package}", s.name))?;
                done(t);
                built
            }
        };
        programs.insert(s.name.clone(), path);
    }
    Ok(programs)
}

/// Whether `name` is one of the service binaries Weft ships (`weft-NAME`
/// for each service with a shipped policy).
fn is_weft_service(name: &str) -> bool {
    name.strip_prefix("weft-").is_some_and(|s| {
        weft::manifest::SHIPPED_POLICIES
            .iter()
            .any(|(n, _)| *n == s)
    })
}

/// The workspace weft was built from, if it is still there.
fn workspace() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    dir.join("Cargo.toml").is_file().then_some(dir)
}

fn find_binary(name: &str, dir: &Path) -> Result<PathBuf> {
    if name.contains('/') {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{} is not a file", path.display());
    }
    let beside = std::env::current_exe()?
        .parent()
        .map(|d| d.join(name))
        .filter(|p| p.is_file());
    if let Some(path) = beside {
        return Ok(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} is neither beside weft nor on PATH (build it: cargo build --bins)")
        })
}

/// `cargo build -p PACKAGE --bin BIN` in the manifest's directory, with the
/// profile weft itself was built with; returns the executable cargo made.
async fn cargo_build(package: &str, bin: &str, dir: &Path) -> Result<PathBuf> {
    let release = std::env::current_exe()?
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|p| p == "release");
    let mut command =
        tokio::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(dir)
        .args([
            "build",
            "--message-format=json-render-diagnostics",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    if release {
        command.arg("--release");
    }
    let out = command.output().await.context("running cargo")?;
    if !out.status.success() {
        bail!("cargo build failed (its errors are above)");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bin)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no executable named {bin}"))
}

/// Where an instance's settings point.
struct Environment<'a> {
    home: &'a Path,
    certs: &'a Path,
    policies: &'a HashMap<String, Option<PathBuf>>,
    setting: &'a str,
    database_url: &'a str,
}

/// Starts every service in order, each once those it depends on are
/// healthy, seeding when the seed's services are; returns the demo's ids.
async fn start_all(
    manifest: &Manifest,
    programs: &HashMap<String, PathBuf>,
    supervised: &mut Supervised,
    events: &mpsc::UnboundedSender<String>,
    env: Environment<'_>,
    mesh_args: &MeshArgs,
) -> Result<Option<Demo>> {
    let mut demo: Option<Demo> = None;
    let mut ready = HashSet::new();
    for service in &manifest.services {
        for dep in &service.depends_on {
            wait_once(supervised, &mut ready, dep).await?;
        }
        let needs_seed = service.env.values().any(|v| v.contains("{demo."));
        if needs_seed && demo.is_none() {
            demo = Some(seed(manifest, supervised, &mut ready, mesh_args).await?);
        }
        let t = step(&format!(
            "starting {} {} instance(s)",
            service.replicas, service.name
        ));
        for n in 1..=service.replicas {
            let mut vars: BTreeMap<String, String> = [
                ("DATABASE_URL", env.database_url.to_owned()),
                ("WEFT_DISCOVERY", env.setting.to_owned()),
                (
                    "WEFT_TLS_CERT",
                    env.certs
                        .join(format!("{}.pem", service.name))
                        .display()
                        .to_string(),
                ),
                (
                    "WEFT_TLS_KEY",
                    env.certs
                        .join(format!("{}.key", service.name))
                        .display()
                        .to_string(),
                ),
                (
                    "WEFT_TLS_CA",
                    env.certs.join("ca.pem").display().to_string(),
                ),
                ("WEFT_DRAIN_MS", "500".to_owned()),
                ("WEFT_DB_POOL_SIZE", "8".to_owned()),
                ("WEFT_VERSION", env!("CARGO_PKG_VERSION").to_owned()),
                // Every instance follows the mesh's route table: edit the
                // file (or use `weft route`) and the change is live within
                // a second, no restart.
                (
                    "WEFT_ROUTES",
                    env.home.join("routes.toml").display().to_string(),
                ),
                ("WEFT_ROUTES_POLL_MS", "1000".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            match env.policies.get(&service.name) {
                Some(Some(policy)) => {
                    vars.insert("WEFT_POLICY".into(), policy.display().to_string());
                }
                _ => {
                    vars.insert("WEFT_ALLOW_TRUST_DOMAIN".into(), "1".into());
                }
            }
            for (k, v) in &service.env {
                let mut value = v.replace("{home}", &env.home.display().to_string());
                if let Some(d) = &demo {
                    value = value.replace("{demo.merchant}", &d.merchant);
                }
                vars.insert(k.clone(), value);
            }
            let program = programs
                .get(&service.name)
                .context("no program resolved")?
                .clone();
            let id = format!("{}-{n}", service.name);
            let spec = Spec {
                service: service.name.clone(),
                log: env.home.join("logs").join(format!("{id}.log")),
                id,
                program,
                env: vars,
                listen: free_port()?,
                metrics: free_port()?,
            };
            let instance = Instance::start(spec, events.clone()).map_err(anyhow::Error::msg)?;
            supervised.instances.push(instance);
        }
        done(t);
    }
    for service in &manifest.services {
        wait_once(supervised, &mut ready, &service.name).await?;
    }
    if demo.is_none() && manifest.seed.is_some() {
        demo = Some(seed(manifest, supervised, &mut ready, mesh_args).await?);
    }
    Ok(demo)
}

/// Waits for every instance of `service` to be healthy, unless `ready`
/// says it was already (start-up asks for each service several times: as
/// a dependency, for the seed, and at the end).
async fn wait_once(
    supervised: &Supervised,
    ready: &mut HashSet<String>,
    service: &str,
) -> Result<()> {
    if ready.contains(service) {
        return Ok(());
    }
    let t = step(&format!("waiting for {service}"));
    supervised.wait_service(service).await?;
    done(t);
    ready.insert(service.to_owned());
    Ok(())
}

/// Runs the manifest's seed once its services are healthy.
async fn seed(
    manifest: &Manifest,
    supervised: &Supervised,
    ready: &mut HashSet<String>,
    mesh_args: &MeshArgs,
) -> Result<Demo> {
    let Some(seed) = manifest.seed else {
        bail!("an env value names {{demo.…}}, but the manifest has no seed = \"demo\"");
    };
    match seed {
        Seed::Demo => {
            for needed in seed.needs() {
                wait_once(supervised, ready, needed).await?;
            }
            let t = step("demo data (products, accounts)");
            let mesh = Mesh::connect(mesh_args).await?;
            let demo = demo_data(&mesh).await?;
            done(t);
            Ok(demo)
        }
    }
}

/// A port free now on 127.0.0.1 (the instance binds it in a moment, and
/// keeps it across restarts).
fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Stops services in the reverse of start order, dependents first, each
/// service's instances together.
async fn stop_all(manifest: &Manifest, supervised: &Supervised) {
    for service in manifest.services.iter().rev() {
        let mine: Vec<&Instance> = supervised.of(&service.name).collect();
        if mine.is_empty() {
            continue;
        }
        let t = step(&format!("stopping {}", service.name));
        let mut stops = tokio::task::JoinSet::new();
        for i in mine {
            let i = i.clone();
            stops.spawn(async move { i.stop().await });
        }
        while stops.join_next().await.is_some() {}
        done(t);
    }
}

async fn stop_cluster(cluster: &Arc<Mutex<Option<Cluster>>>) {
    let taken = cluster.lock().ok().and_then(|mut c| c.take());
    if let Some(mut c) = taken {
        let t = step("removing the PostgreSQL cluster");
        match tokio::task::spawn_blocking(move || c.stop()).await {
            Ok(Ok(())) => done(t),
            Ok(Err(e)) => eprintln!("{e}"),
            Err(e) => eprintln!("{e}"),
        }
    }
}

/// Resolves (true) on the next SIGINT or SIGTERM (a service manager's
/// stop, or `timeout`: drained as a Ctrl-C is); the listeners are
/// registered now, not when first polled, so a signal right after this call
/// is not missed.
fn next_interrupt() -> Result<impl std::future::Future<Output = bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            got = interrupt.recv() => got.is_some(),
            got = terminate.recv() => got.is_some(),
        }
    })
}

/// weft up's own log goes to HOME/up.log (each instance has its own in
/// HOME/logs), keeping the terminal for the status table.
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

/// The CA (made if absent; its trust domain wins) and certificates for
/// each service and the `dev` operator; returns the trust domain.
fn ensure_certs(dir: &Path, trust_domain: &str, services: &[&str]) -> Result<String> {
    let ca = if dir.join("ca.pem").is_file() {
        DevCa::load(dir).with_context(|| format!("loading the CA in {}", dir.display()))?
    } else {
        let ca = DevCa::create(trust_domain, Validity::days(3650))?;
        ca.write(dir, false)?;
        ca
    };
    let td = ca.trust_domain().unwrap_or(trust_domain).to_owned();
    let sans = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    for service in services {
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

/// Writes each service's policy to HOME/policy/NAME.toml (see
/// [`weft::manifest::policy_text`]). A service with no policy gets `None`:
/// every caller of the trust domain may call it.
fn write_policies(
    home: &Path,
    manifest: &Manifest,
    trust_domain: &str,
) -> Result<HashMap<String, Option<PathBuf>>> {
    let dir = home.join("policy");
    std::fs::create_dir_all(&dir)?;
    let mut out = HashMap::new();
    for s in &manifest.services {
        let Some(text) = weft::manifest::policy_text(&s.policy, trust_domain)
            .with_context(|| format!("service {}: its policy", s.name))?
        else {
            out.insert(s.name.clone(), None);
            continue;
        };
        let path = dir.join(format!("{}.toml", s.name));
        std::fs::write(&path, text)?;
        out.insert(s.name.clone(), Some(path));
    }
    Ok(out)
}

/// Each running instance's metrics, read from its endpoint (within 1 s).
async fn scrape_all(instances: &[Instance]) -> HashMap<String, Totals> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in instances {
        let (id, addr) = (i.spec.id.clone(), i.spec.metrics);
        tasks.spawn(async move {
            let body =
                tokio::time::timeout(Duration::from_secs(1), weft::scrape::get(addr, "/metrics"))
                    .await;
            (id, body)
        });
    }
    let mut out = HashMap::new();
    while let Some(Ok((id, body))) = tasks.join_next().await {
        if let Ok(Ok(text)) = body {
            out.insert(id, status::totals(&text));
        }
    }
    out
}

/// `weft logs`: an instance's log, all of it or its tail, and with
/// `--follow` what it writes next.
pub async fn logs(args: LogsArgs) -> Result<()> {
    let id = &args.instance;
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("{id:?} is not an instance name (such as inventory-1)");
    }
    let path = args.home.join("logs").join(format!("{id}.log"));
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "no log for {id} in {} (is --home the weft up's, and the name one its table lists?)",
            args.home.join("logs").display()
        )
    })?;
    let mut shown = text.len();
    let start = match args.tail {
        Some(n) => text
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| **b == b'\n')
            .nth(n)
            .map_or(0, |(i, _)| i + 1),
        None => 0,
    };
    let mut out = std::io::stdout();
    out.write_all(&text[start..])?;
    out.flush()?;
    if !args.follow {
        return Ok(());
    }
    let signal = tokio::signal::ctrl_c();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                let now = std::fs::read(&path).unwrap_or_default();
                // A file that shrank was replaced: start from its beginning.
                if now.len() < shown {
                    shown = 0;
                }
                out.write_all(&now[shown..])?;
                out.flush()?;
                shown = now.len();
            }
        }
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

fn print_ready(home: &Path, certs: &Path, supervised: &Supervised, demo: Option<&Demo>) {
    let first = |service: &str| {
        supervised
            .of(service)
            .next()
            .map(|i| i.spec.listen.to_string())
    };
    let tls = format!(
        "-cacert {c}/ca.pem -cert {c}/operator-dev.pem -key {c}/operator-dev.key",
        c = certs.display()
    );
    println!(
        "[up] ready: the mesh is up over mTLS; logs in {}/logs (weft logs INSTANCE)",
        home.display()
    );
    if let Some(demo) = demo {
        println!(
            "[up] demo accounts: alice {} (100,000.00 EUR), bob {} (50.00 EUR); products WIDGET-1, GADGET-1, GIZMO-1",
            demo.alice, demo.bob
        );
    }
    println!("[up] try (grpcurl):");
    let mut services = supervised
        .instances
        .iter()
        .map(|i| i.spec.service.as_str())
        .collect::<Vec<_>>();
    services.dedup();
    for service in &services {
        if let Some(addr) = first(service) {
            println!("  grpcurl {tls} {addr} list");
        }
    }
    if let (Some(demo), Some(orders)) = (demo, first("orders")) {
        println!(
            "  grpcurl {tls} -d '{{\"idempotency_key\":\"order-1\",\"customer_id\":\"alice\",\"payment_account_id\":\"{}\",\"lines\":[{{\"sku\":\"WIDGET-1\",\"quantity\":\"2\"}}]}}' {orders} weft.orders.v1.OrdersService/PlaceOrder",
            demo.alice
        );
        println!(
            "  grpcurl {tls} -d '{{\"customer_id\":\"alice\"}}' {orders} weft.orders.v1.OrdersService/ListOrders"
        );
    }
    println!("[up] or with weft, by service name through discovery (from this directory):");
    if let Some(demo) = demo {
        println!(
            "  weft call orders/PlaceOrder -d '{{\"idempotency_key\":\"order-2\",\"customer_id\":\"bob\",\"payment_account_id\":\"{}\",\"lines\":[{{\"sku\":\"GIZMO-1\",\"quantity\":\"1\"}}]}}'",
            demo.bob
        );
        println!("  weft load --account {}", demo.alice);
    }
    println!(
        "  weft ls; weft health; weft logs {0}-1 -f; weft kill {0}-1; weft restart {0}",
        services.first().copied().unwrap_or("SERVICE")
    );
    println!("[up] Ctrl-C drains and stops everything");
    if std::io::stdout().is_terminal() {
        // The status table is redrawn from here.
        print!("\x1b[s");
    }
    let _ = std::io::stdout().flush();
}

fn print_status(
    supervised: &Supervised,
    scraped: &HashMap<String, Totals>,
    last: &mut HashMap<String, Totals>,
    seconds: f64,
    tty: bool,
    recent: &[String],
) {
    let mut out = String::new();
    if tty {
        // Redraw in place, under the ready message: back to where it ended
        // (saved then), clear below.
        out.push_str("\x1b[u\x1b[J");
    }
    out.push_str(&format!(
        "{:<10} {:<13} {:<16} {:>7} {:<10} {:>8} {:>8} {:>9} {:>9}\n",
        "SERVICE", "INSTANCE", "ADDRESS", "PID", "STATE", "RESTARTS", "REQ/S", "P50", "P99"
    ));
    for i in &supervised.instances {
        let status = i.status();
        let healthy = supervised.watches.get(&i.spec.service).and_then(|w| {
            w.borrow()
                .endpoints
                .iter()
                .find(|e| e.id == i.spec.id)
                .map(|e| e.healthy)
        });
        let (pid, state) = match status.phase {
            Phase::Running { pid } => (
                pid.to_string(),
                match healthy {
                    Some(true) => "healthy".to_owned(),
                    Some(false) => "unhealthy".to_owned(),
                    None => "starting".to_owned(),
                },
            ),
            Phase::Waiting { at } => (
                "-".to_owned(),
                format!(
                    "restart {:.0}s",
                    at.saturating_duration_since(Instant::now())
                        .as_secs_f64()
                        .ceil()
                ),
            ),
            Phase::Stopping => ("-".to_owned(), "draining".to_owned()),
            Phase::Stopped => ("-".to_owned(), "stopped".to_owned()),
        };
        let (rate, p50, p99) = match scraped.get(&i.spec.id) {
            Some(now) => {
                let before = last.get(&i.spec.id).cloned().unwrap_or_default();
                // A restarted process counts from zero again.
                let before = if now.calls < before.calls {
                    Totals::default()
                } else {
                    before
                };
                let w = status::window(&before, now, seconds);
                last.insert(i.spec.id.clone(), now.clone());
                (
                    format!("{:.1}", w.rate),
                    status::ms(w.p50_ms),
                    status::ms(w.p99_ms),
                )
            }
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        out.push_str(&format!(
            "{:<10} {:<13} {:<16} {:>7} {:<10} {:>8} {:>8} {:>9} {:>9}\n",
            i.spec.service,
            i.spec.id,
            i.spec.listen.to_string(),
            pid,
            state,
            status.restarts,
            rate,
            p50,
            p99
        ));
    }
    for event in recent {
        out.push_str(&format!("  {event}\n"));
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}
