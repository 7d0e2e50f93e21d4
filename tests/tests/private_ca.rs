//! Identities from AWS Private CA (the moto server, through the real SDK):
//! a task's certificate carries its SPIFFE id; certificates of a few
//! seconds renew under continuous load on both sides of a call without a
//! failed call; a CA rotation done as rolling deploys loses no call; a CA
//! scoped to one service cannot vouch for another; the bundle follows a
//! CA whose certificate was renewed.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use weft_mesh::private_ca::aws::AwsAuthority;
use weft_mesh::private_ca::{self, Settings};
use weft_mesh::{CertStore, SpiffeId, client_config, mtls_channel};
use weft_tests::moto::Moto;
use weft_tests::servers::serve_mtls;

const TD: &str = "weft.test";

fn settings(
    moto: &Moto,
    service: &str,
    issuing: &str,
    trust: &[(&str, &str)],
    lifetime: Duration,
) -> Settings {
    Settings {
        issuing_ca: issuing.to_owned(),
        identity: SpiffeId::service(TD, service).unwrap(),
        dns_names: vec![format!("{service}.weft.internal")],
        trust: trust
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        lifetime,
        renew_at: 2.0 / 3.0,
        jitter: 0.05,
        trust_refresh: Duration::from_secs(3600),
        // moto's CAs are RSA.
        signing_algorithm: "SHA256WITHRSA".into(),
        template_arn: private_ca::END_ENTITY_TEMPLATE.into(),
        start_timeout: Duration::from_secs(10),
        aws: moto.options(),
    }
}

async fn open(settings: Settings) -> (CertStore, Arc<AwsAuthority>) {
    let authority = Arc::new(AwsAuthority::connect(&settings).await);
    let store = private_ca::open(authority.clone(), settings).await.unwrap();
    (store, authority)
}

async fn health_server(store: &CertStore) -> SocketAddr {
    let (_reporter, health) = tonic_health::server::health_reporter();
    serve_mtls(store, Routes::new(health)).await.unwrap()
}

/// One call over a new connection (so a new handshake, with the
/// certificates and bundles both sides hold now).
async fn call_fresh(client: &CertStore, server: SocketAddr, service: &str) -> Result<(), String> {
    let expected = SpiffeId::service(TD, service).unwrap();
    let tls = client_config(client, expected).map_err(|e| e.to_string())?;
    let channel = mtls_channel(server, tls).map_err(|e| e.to_string())?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn a_task_gets_a_certificate_for_its_spiffe_id_from_private_ca() {
    let moto = Moto::start().await.unwrap();
    let ca = moto.create_root_ca("weft inventory").await.unwrap();
    let started = SystemTime::now();
    let (store, authority) = open(settings(
        &moto,
        "inventory",
        &ca,
        &[("*", &ca)],
        Duration::from_secs(3600),
    ))
    .await;
    let material = store.current();
    assert_eq!(
        material.id.to_string(),
        "spiffe://weft.test/service/inventory"
    );
    // The lifetime asked for, not moto's default year.
    let left = material.not_after.duration_since(started).unwrap();
    assert!(
        left <= Duration::from_secs(3601) && left > Duration::from_secs(3500),
        "{left:?}"
    );
    // The CSR's SANs survive: the SPIFFE URI (checked by `id`) and the DNS name.
    let leaf = material.key.end_entity_cert().unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let dns: Vec<String> = parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(dns, vec!["inventory.weft.internal".to_owned()]);
    assert_eq!(material.key.cert.len(), 2, "leaf and the CA certificate");
    assert_eq!(authority.calls.issue.load(Ordering::Relaxed), 1);
    assert_eq!(authority.calls.ca_certificate.load(Ordering::Relaxed), 1);

    // It serves: a peer holding a certificate from the same CA calls it.
    let server = health_server(&store).await;
    let (client, _) = open(settings(
        &moto,
        "orders",
        &ca,
        &[("*", &ca)],
        Duration::from_secs(3600),
    ))
    .await;
    call_fresh(&client, server, "inventory").await.unwrap();
}

#[tokio::test]
async fn certificates_of_three_seconds_renew_under_load_on_both_sides_without_a_failed_call() {
    let moto = Moto::start().await.unwrap();
    let ca = moto.create_root_ca("weft").await.unwrap();
    let lifetime = Duration::from_secs(3);
    let (server_store, server_calls) =
        open(settings(&moto, "inventory", &ca, &[("*", &ca)], lifetime)).await;
    let (client_store, client_calls) =
        open(settings(&moto, "orders", &ca, &[("*", &ca)], lifetime)).await;
    let server = health_server(&server_store).await;
    let started = Instant::now();

    // A connection that lives through every renewal, and a new connection
    // (a new handshake with what both sides hold now) every 50 ms.
    let expected = SpiffeId::service(TD, "inventory").unwrap();
    let long_lived = mtls_channel(server, client_config(&client_store, expected).unwrap()).unwrap();
    let mut held = HealthClient::new(long_lived);
    let (mut ok, mut failed) = (0u32, Vec::new());
    let mut served = vec![server_store.current().not_after];
    let mut presented = vec![client_store.current().not_after];
    let deadline = Instant::now() + Duration::from_secs(30);
    while served.len() < 4 || presented.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "fewer than three renewals in 30 s: {served:?} {presented:?}"
        );
        for outcome in [
            held.check(HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
            call_fresh(&client_store, server, "inventory").await,
        ] {
            match outcome {
                Ok(()) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        for (store, seen) in [
            (&server_store, &mut served),
            (&client_store, &mut presented),
        ] {
            let now = store.current().not_after;
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} calls");
    // Each renewal is one IssueCertificate; nothing retried.
    assert!(server_calls.calls.issue.load(Ordering::Relaxed) >= 4);
    assert!(client_calls.calls.issue.load(Ordering::Relaxed) >= 4);
    // The figure: Private CA calls per certificate lifetime, measured, and
    // so per task per day at the default lifetime of a day.
    let lifetimes = started.elapsed().as_secs_f64() / lifetime.as_secs_f64();
    let per_lifetime =
        |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed) as f64 / lifetimes;
    println!(
        "renewals: server {} client {}, calls {ok}, failed 0; Private CA calls per lifetime (= per day at the default): IssueCertificate {:.2}, GetCertificate {:.2}",
        served.len() - 1,
        presented.len() - 1,
        per_lifetime(&server_calls.calls.issue),
        per_lifetime(&server_calls.calls.get),
    );
}

/// Calls from every client to every server over new connections; the
/// failures, described.
async fn every_pair(clients: &[&CertStore], servers: &[SocketAddr], rounds: usize) -> Vec<String> {
    let mut failed = Vec::new();
    for _ in 0..rounds {
        for (c, client) in clients.iter().enumerate() {
            for (s, server) in servers.iter().enumerate() {
                if let Err(e) = call_fresh(client, *server, "inventory").await {
                    failed.push(format!("client {c} -> server {s}: {e}"));
                }
            }
        }
    }
    failed
}

/// One deploy's tasks: a server and a client, issued from `issuing` and
/// trusting `trust`, with the server's address.
async fn generation(
    moto: &Moto,
    issuing: &str,
    trust: &[(&str, &str)],
) -> (CertStore, CertStore, SocketAddr) {
    let life = Duration::from_secs(3600);
    let (server, _) = open(settings(moto, "inventory", issuing, trust, life)).await;
    let (client, _) = open(settings(moto, "orders", issuing, trust, life)).await;
    let addr = health_server(&server).await;
    (server, client, addr)
}

#[tokio::test]
async fn a_ca_rotation_in_three_rolling_steps_loses_no_call() {
    let moto = Moto::start().await.unwrap();
    let old = moto.create_root_ca("weft 2026").await.unwrap();
    let new = moto.create_root_ca("weft 2027").await.unwrap();
    // Before: everyone issues from and trusts the old CA.
    let g0 = generation(&moto, &old, &[("*", &old)]).await;
    // Step 1, trust both; step 2, issue from the new one; step 3, trust
    // only the new one. In each rolling deploy old and new tasks call each
    // other both ways.
    let g1 = generation(&moto, &old, &[("*", &old), ("*", &new)]).await;
    assert_eq!(
        every_pair(&[&g0.1, &g1.1], &[g0.2, g1.2], 3).await,
        Vec::<String>::new()
    );
    let g2 = generation(&moto, &new, &[("*", &old), ("*", &new)]).await;
    assert_eq!(
        every_pair(&[&g1.1, &g2.1], &[g1.2, g2.2], 3).await,
        Vec::<String>::new()
    );
    let g3 = generation(&moto, &new, &[("*", &new)]).await;
    assert_eq!(
        every_pair(&[&g2.1, &g3.1], &[g2.2, g3.2], 3).await,
        Vec::<String>::new()
    );

    // Skipping the first step would have failed calls both ways.
    let skipped = every_pair(&[&g0.1, &g3.1], &[g0.2, g3.2], 1).await;
    assert_eq!(skipped.len(), 2, "{skipped:?}");
}

#[tokio::test]
async fn a_ca_scoped_to_one_service_cannot_vouch_for_another() {
    let moto = Moto::start().await.unwrap();
    let inventory_ca = moto.create_root_ca("weft inventory").await.unwrap();
    let orders_ca = moto.create_root_ca("weft orders").await.unwrap();
    let trust = [
        ("service/inventory", inventory_ca.as_str()),
        ("service/orders", orders_ca.as_str()),
    ];
    let life = Duration::from_secs(3600);
    let (server, _) = open(settings(&moto, "inventory", &inventory_ca, &trust, life)).await;
    let (orders, _) = open(settings(&moto, "orders", &orders_ca, &trust, life)).await;
    let addr = health_server(&server).await;
    call_fresh(&orders, addr, "inventory").await.unwrap();

    // A task that can issue from orders' CA makes itself a certificate
    // naming inventory (IAM cannot see what a CSR names): peers refuse it,
    // as a server and as a client.
    let mut forged = settings(&moto, "inventory", &orders_ca, &[("*", &orders_ca)], life);
    forged.trust = trust
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (impostor, _) = open(forged).await;
    let impostor_addr = health_server(&impostor).await;
    let as_server = call_fresh(&orders, impostor_addr, "inventory").await;
    assert!(
        as_server.is_err(),
        "a client accepted inventory's name from orders' CA"
    );
    // As a client: the server verifies the impostor's chain against
    // inventory's scope, which does not hold orders' CA.
    let expected = SpiffeId::service(TD, "inventory").unwrap();
    let tls = client_config(&impostor, expected).unwrap();
    let refused = HealthClient::new(mtls_channel(addr, tls).unwrap())
        .check(HealthCheckRequest::default())
        .await;
    assert!(
        refused.is_err(),
        "a server accepted inventory's name from orders' CA"
    );
}

#[tokio::test]
async fn the_bundle_follows_a_ca_whose_certificate_was_renewed() {
    let moto = Moto::start().await.unwrap();
    let ca = moto.create_root_ca("weft").await.unwrap();
    let mut s = settings(
        &moto,
        "inventory",
        &ca,
        &[("*", &ca)],
        Duration::from_secs(3600),
    );
    s.trust_refresh = Duration::from_millis(300);
    let (store, authority) = open(s).await;
    let before = store.current().generation;
    // The CA's certificate is renewed (same key, new validity), as an
    // operator renews a Private CA.
    moto.renew_root_ca(&ca).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.current().generation == before {
        assert!(
            Instant::now() < deadline,
            "the renewed CA certificate was not fetched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(authority.calls.ca_certificate.load(Ordering::Relaxed) >= 2);
}
