//! `kill -9` of one of three real inventory processes (the binary, configured
//! from its environment, as production runs it) under steady load: no
//! idempotent call fails and no call reaches the dead process after 1 s.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use weft_mesh::ClientOptions;
use weft_tests::TestDb;
use weft_tests::cluster::Cluster;
use weft_tests::load::{KillReport, kill_under_load, wait_for_endpoints};
use weft_tests::process::{ServiceProcess, binary, service_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_of_one_of_three_processes_fails_no_idempotent_call() {
    let db = TestDb::create().await.unwrap();
    let cluster = Cluster::new().unwrap();
    let identity = cluster.pki().service("inventory", "inventory").unwrap();
    let inventory = binary("weft-inventory").unwrap();
    let mut processes = Vec::new();
    for n in 0..3 {
        let env = service_env(
            db.url(),
            &identity,
            &[
                ("WEFT_DISCOVERY", cluster.setting()),
                ("WEFT_INSTANCE_ID", format!("proc-{n}")),
                ("WEFT_HEALTH_INTERVAL_MS", "100".into()),
            ],
        );
        processes.push(ServiceProcess::start(&inventory, &env).unwrap());
    }

    let channel = cluster.channel(ClientOptions::default()).await.unwrap();
    wait_for_endpoints(&channel, 3).await.unwrap();
    let KillReport {
        calls,
        failures,
        before_kill: before,
        after_one_second,
        later,
    } = kill_under_load(&channel, "proc-1", || processes[1].kill())
        .await
        .unwrap();

    assert_eq!(failures, 0, "{failures} of {calls} idempotent calls failed");
    assert!(before > 0, "the victim served before it was killed");
    assert_eq!(
        later, after_one_second,
        "calls reached the killed process after 1 s"
    );
    assert!(calls > 100, "only {calls} calls");
}
