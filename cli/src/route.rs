//! `weft route`: the mesh's live route table, wherever it lives (a file, or
//! an SSM parameter): show it, set a service's split, and shift weight to a
//! new subset step by step while judging it by its own servers' figures
//! (error rate and p99 from each instance's /metrics), rolling back by
//! itself when it fails them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use weft_mesh::RouteTable;
use weft_mesh::client::Subset;
use weft_service::routes::SourceSetting;

use crate::target::MeshArgs;

/// Where the table is.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// The table: a file, or `ssm:NAME` for an SSM parameter (the default
    /// is `weft up`'s .weft/routes.toml).
    #[arg(long, env = "WEFT_ROUTES", default_value = ".weft/routes.toml")]
    routes: String,
    #[command(subcommand)]
    command: RouteCommand,
}

#[derive(Debug, Subcommand)]
enum RouteCommand {
    /// Print the table (one service's, or every service's).
    Show {
        /// The service.
        service: Option<String>,
    },
    /// Set a service's split: `weft route set inventory version=1.4:95
    /// version=1.5:5` (SUBSET:WEIGHT, a subset's attributes joined by
    /// commas).
    Set {
        /// The service.
        service: String,
        /// Each subset and its weight.
        #[arg(required = true)]
        weights: Vec<String>,
    },
    /// Move a service's calls from one subset to another step by step,
    /// watching the new one's error rate and p99 at each step, and roll
    /// back to the old one by itself if either passes its bound.
    Shift(ShiftArgs),
}

/// A canary's steps and bounds.
#[derive(Debug, Args)]
struct ShiftArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The service.
    service: String,
    /// The subset calls leave (`version=1.4`).
    #[arg(long)]
    from: String,
    /// The subset calls go to (`version=1.5`).
    #[arg(long)]
    to: String,
    /// The new subset's share at each step, in percent.
    #[arg(long, value_delimiter = ',', default_value = "5,25,50,100")]
    steps: Vec<u32>,
    /// How long each step is watched.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    interval: Duration,
    /// How often the figures are read within a step.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    every: Duration,
    /// The most calls the new subset may fail (server faults: UNKNOWN,
    /// INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS), as a share.
    #[arg(long, default_value_t = 0.05)]
    max_error_rate: f64,
    /// The longest p99 latency the new subset may show.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    max_p99: Duration,
    /// Calls a reading needs before it is judged.
    #[arg(long, default_value_t = 20)]
    min_calls: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    weft_mesh::client::parse_duration(text)
        .ok_or_else(|| format!("{text:?}: durations look like 250ms, 2s or 1m"))
}

/// Runs `weft route`.
pub async fn run(args: RouteArgs) -> Result<()> {
    let setting =
        SourceSetting::parse(&args.routes).map_err(|e| anyhow::anyhow!("--routes: {e}"))?;
    match args.command {
        RouteCommand::Show { service } => show(&setting, service.as_deref()).await,
        RouteCommand::Set { service, weights } => {
            let split = weights
                .iter()
                .map(|w| parse_weight(w))
                .collect::<Result<Vec<_>>>()?;
            set_split(&setting, &service, &split).await?;
            println!("{service}: {} (in {setting})", describe(&split));
            Ok(())
        }
        RouteCommand::Shift(shift_args) => shift(&setting, shift_args).await,
    }
}

/// `a=b,c=d:95` → ({a: b, c: d}, 95).
fn parse_weight(text: &str) -> Result<(BTreeMap<String, String>, u32)> {
    let (subset, weight) = text
        .rsplit_once(':')
        .with_context(|| format!("{text:?}: expected SUBSET:WEIGHT, e.g. version=1.5:5"))?;
    let weight = weight
        .parse()
        .with_context(|| format!("{text:?}: the weight is a whole number"))?;
    Ok((parse_subset(subset)?, weight))
}

/// `a=b,c=d` → {a: b, c: d}.
fn parse_subset(text: &str) -> Result<BTreeMap<String, String>> {
    let mut attributes = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?}: attributes look like version=1.5"))?;
        attributes.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    if attributes.is_empty() {
        bail!("{text:?} names no attribute");
    }
    Ok(attributes)
}

fn describe(split: &[(BTreeMap<String, String>, u32)]) -> String {
    split
        .iter()
        .map(|(s, w)| format!("{}: {w}", Subset::new(s.clone())))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn read(setting: &SourceSetting) -> Result<String> {
    Ok(setting
        .read()
        .await
        .map_err(|e| anyhow::anyhow!("reading {setting}: {e}"))?
        .unwrap_or_default())
}

async fn show(setting: &SourceSetting, service: Option<&str>) -> Result<()> {
    let text = read(setting).await?;
    let table = RouteTable::from_toml(&text).with_context(|| format!("the table in {setting}"))?;
    let names: Vec<&str> = match service {
        Some(s) => vec![s],
        None => table.services(),
    };
    if names.is_empty() {
        println!("no routes in {setting}: every call goes to every endpoint");
    }
    for name in names {
        match table.service(name) {
            None => println!("{name}: no routes (every endpoint)"),
            Some(routes) => {
                let split = routes
                    .split()
                    .iter()
                    .map(|(s, w)| format!("{s}: {w}"))
                    .collect::<Vec<_>>();
                println!(
                    "{name}: split {}",
                    if split.is_empty() {
                        "none".to_owned()
                    } else {
                        split.join(", ")
                    }
                );
            }
        }
    }
    if service.is_none() && !text.trim().is_empty() {
        println!("\n{text}");
    }
    Ok(())
}

/// Rewrites `service`'s split in the table, keeping everything else, and
/// stores it once it parses as a table.
async fn set_split(
    setting: &SourceSetting,
    service: &str,
    split: &[(BTreeMap<String, String>, u32)],
) -> Result<String> {
    let text = read(setting).await?;
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("the table in {setting}"))?;
    let services = doc
        .entry("services")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .context("`services` is not a table")?;
    let routes = services
        .entry(service)
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .with_context(|| format!("services.{service} is not a table"))?;
    let entries = split
        .iter()
        .map(|(subset, weight)| {
            let mut entry = toml::Table::new();
            entry.insert(
                "subset".into(),
                toml::Value::Table(
                    subset
                        .iter()
                        .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                        .collect(),
                ),
            );
            entry.insert("weight".into(), toml::Value::Integer(i64::from(*weight)));
            toml::Value::Table(entry)
        })
        .collect();
    routes.insert("split".into(), toml::Value::Array(entries));
    let new = toml::to_string(&doc)?;
    RouteTable::from_toml(&new).context("the new table")?;
    setting.write(&new).await.map_err(|e| anyhow::anyhow!(e))?;
    Ok(new)
}

/// What the new subset's servers counted so far: calls by outcome and the
/// latency histogram (cumulative counts by bucket bound).
#[derive(Debug, Default, Clone)]
struct Figures {
    calls: u64,
    faults: u64,
    buckets: BTreeMap<u64, u64>,
}

impl Figures {
    fn since(&self, before: &Figures) -> Figures {
        Figures {
            calls: self.calls.saturating_sub(before.calls),
            faults: self.faults.saturating_sub(before.faults),
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (*le, n.saturating_sub(*before.buckets.get(le).unwrap_or(&0))))
                .collect(),
        }
    }

    /// The p99 bound: the smallest bucket holding 99% of the calls.
    fn p99(&self) -> Option<Duration> {
        let total = self.buckets.get(&u64::MAX).copied()?;
        if total == 0 {
            return None;
        }
        let want = (total as f64 * 0.99).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, n)| **n >= want)
            .map(|(le, _)| Duration::from_micros(*le))
    }
}

/// Sums the server figures of `/metrics` texts (health checks left out).
fn figures(texts: &[String]) -> Figures {
    const FAULTS: [&str; 5] = [
        "UNKNOWN",
        "INTERNAL",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "DATA_LOSS",
    ];
    let mut f = Figures::default();
    for line in texts.iter().flat_map(|t| t.lines()) {
        if line.contains("grpc_service=\"grpc.health.v1.Health\"") {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        if series.starts_with("weft_server_responses_total{") {
            f.calls += value;
            if FAULTS
                .iter()
                .any(|c| series.contains(&format!("grpc_code=\"{c}\"")))
            {
                f.faults += value;
            }
        } else if series.starts_with("weft_server_request_duration_seconds_bucket{") {
            let le = series
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default();
            let bound = if le == "+Inf" {
                u64::MAX
            } else {
                le.parse::<f64>()
                    .map(|s| (s * 1e6) as u64)
                    .unwrap_or(u64::MAX)
            };
            *f.buckets.entry(bound).or_default() += value;
        }
    }
    f
}

/// The metrics addresses of `service`'s instances in `subset`.
async fn metrics_of(mesh: &MeshArgs, service: &str, subset: &Subset) -> Result<Vec<SocketAddr>> {
    let snapshot = crate::target::Mesh::connect(mesh)
        .await?
        .instances(service)
        .await?;
    Ok(snapshot
        .endpoints
        .iter()
        .filter(|e| e.healthy && subset.contains(&e.attributes))
        .filter_map(|e| {
            let port = e.attributes.get("metrics_port")?.parse().ok()?;
            Some(SocketAddr::new(e.addr.ip(), port))
        })
        .collect())
}

async fn read_figures(addrs: &[SocketAddr]) -> Figures {
    let mut texts = Vec::new();
    for addr in addrs {
        // An instance that cannot be read now is read at the next tick.
        if let Ok(text) = weft::scrape::get(*addr, "/metrics").await {
            texts.push(text);
        }
    }
    figures(&texts)
}

async fn shift(setting: &SourceSetting, args: ShiftArgs) -> Result<()> {
    let from = parse_subset(&args.from)?;
    let to = parse_subset(&args.to)?;
    let target = Subset::new(to.clone());
    if args.steps.is_empty() || args.steps.iter().any(|s| *s > 100) {
        bail!("--steps are shares in percent, from 0 to 100");
    }
    // The table must be readable before anything moves.
    read(setting).await?;
    let addrs = metrics_of(&args.mesh, &args.service, &target).await?;
    if addrs.is_empty() {
        bail!(
            "no healthy {} instance with {target} and a metrics_port to judge it by",
            args.service
        );
    }
    println!(
        "shifting {} from {} to {target} in steps {:?}, {:?} each; rollback above {:.1}% faults or p99 {:?}",
        args.service,
        Subset::new(from.clone()),
        args.steps,
        args.interval,
        args.max_error_rate * 100.0,
        args.max_p99
    );
    let (mut total_calls, mut total_faults) = (0u64, 0u64);
    for step in &args.steps {
        set_split(
            setting,
            &args.service,
            &[(from.clone(), 100 - step), (to.clone(), *step)],
        )
        .await?;
        println!("step {step}%: {} now takes {step}% of calls", target);
        let start = read_figures(&addrs).await;
        let ends = tokio::time::Instant::now() + args.interval;
        loop {
            tokio::time::sleep(args.every).await;
            let now = read_figures(&addrs).await.since(&start);
            let rate = now.faults as f64 / now.calls.max(1) as f64;
            let p99 = now.p99();
            let failing = now.calls >= args.min_calls
                && (rate > args.max_error_rate || p99.is_some_and(|p| p > args.max_p99));
            if failing {
                // Back to the old subset, then say why.
                set_split(
                    setting,
                    &args.service,
                    &[(from.clone(), 100), (to.clone(), 0)],
                )
                .await?;
                total_calls += now.calls;
                total_faults += now.faults;
                println!(
                    "ROLLED BACK at step {step}%: {target} failed {} of {} calls ({:.1}%), p99 {p99:?}; all calls back on {}",
                    now.faults,
                    now.calls,
                    rate * 100.0,
                    Subset::new(from.clone())
                );
                println!(
                    "over the shift {target} failed {total_faults} of {total_calls} calls it served"
                );
                bail!("the shift was rolled back");
            }
            if tokio::time::Instant::now() >= ends {
                total_calls += now.calls;
                total_faults += now.faults;
                println!(
                    "  {} calls, {:.2}% faults, p99 {p99:?}: within bounds",
                    now.calls,
                    rate * 100.0
                );
                break;
            }
        }
    }
    println!(
        "shifted: {target} takes {}% of {}'s calls",
        args.steps.last().copied().unwrap_or(0),
        args.service
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_subsets_parse() {
        let (subset, weight) = parse_weight("version=1.5,zone=a:5").unwrap();
        assert_eq!(weight, 5);
        assert_eq!(subset.get("zone").map(String::as_str), Some("a"));
        assert!(parse_weight("version=1.5").is_err());
        assert!(parse_weight(":5").is_err());
        assert!(parse_weight("version:x").is_err());
    }

    #[test]
    fn figures_count_faults_and_find_the_p99() {
        let text = r#"weft_server_responses_total{grpc_service="s",grpc_method="M",peer="p",grpc_code="OK"} 90
weft_server_responses_total{grpc_service="s",grpc_method="M",peer="p",grpc_code="INTERNAL"} 8
weft_server_responses_total{grpc_service="s",grpc_method="M",peer="p",grpc_code="NOT_FOUND"} 2
weft_server_responses_total{grpc_service="grpc.health.v1.Health",grpc_method="Check",peer="p",grpc_code="OK"} 500
weft_server_request_duration_seconds_bucket{grpc_service="s",grpc_method="M",peer="p",le="0.001"} 50
weft_server_request_duration_seconds_bucket{grpc_service="s",grpc_method="M",peer="p",le="0.01"} 98
weft_server_request_duration_seconds_bucket{grpc_service="s",grpc_method="M",peer="p",le="0.1"} 99
weft_server_request_duration_seconds_bucket{grpc_service="s",grpc_method="M",peer="p",le="+Inf"} 100
"#;
        let f = figures(&[text.to_owned()]);
        assert_eq!((f.calls, f.faults), (100, 8));
        assert_eq!(f.p99(), Some(Duration::from_millis(100)));
        let later = figures(&[text.replace(" 90\n", " 190\n")]).since(&f);
        assert_eq!((later.calls, later.faults), (100, 0));
        assert_eq!(later.p99(), None, "no latency counted in between");
    }
}
