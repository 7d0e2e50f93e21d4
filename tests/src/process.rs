//! Runs a service binary as its own process, as production does, for the
//! tests that must kill one for real (`kill -9`) or signal it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// The environment of a service process on the database at `database_url`
/// over mTLS with `identity`: listening on 127.0.0.1 port 0, metrics on a
/// port of their own, no drain wait, every caller of the trust domain
/// allowed unless `extra` names a policy; then `extra`, which overrides.
pub fn service_env(
    database_url: String,
    identity: &weft_mesh::IdentityPaths,
    extra: &[(&str, String)],
) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", database_url),
        ("WEFT_LISTEN", "127.0.0.1:0".into()),
        ("WEFT_TLS_CERT", identity.cert.display().to_string()),
        ("WEFT_TLS_KEY", identity.key.display().to_string()),
        ("WEFT_TLS_CA", identity.trust_bundle.display().to_string()),
        ("WEFT_METRICS_ADDR", "127.0.0.1:0".into()),
        ("WEFT_DRAIN_MS", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // Tests that give no policy mean the trust domain to be open.
    if !extra.iter().any(|(k, _)| *k == "WEFT_POLICY") {
        env.insert("WEFT_ALLOW_TRUST_DOMAIN".into(), "1".into());
    }
    for (k, v) in extra {
        env.insert((*k).to_owned(), v.clone());
    }
    env
}

/// Finds a workspace binary next to the running test executable
/// (`target/<profile>/<name>`); scripts/test builds them first.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("unexpected test executable location")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --workspace --bins` (scripts/test does)",
            path.display()
        );
    }
    Ok(path)
}

/// A running service process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts `binary` with exactly `env` (plus PATH), output discarded
    /// unless `WEFT_TEST_LOGS` is set.
    pub fn start(binary: &std::path::Path, env: &HashMap<String, String>) -> Result<Self> {
        Self::spawn(binary, env, |command| {
            if std::env::var_os("WEFT_TEST_LOGS").is_none() {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
            Ok(())
        })
    }

    /// Starts `binary` as [`ServiceProcess::start`] does, its output (both
    /// streams) written to `log` for the test to read.
    pub fn start_logged(
        binary: &std::path::Path,
        env: &HashMap<String, String>,
        log: &tempfile::NamedTempFile,
    ) -> Result<Self> {
        Self::spawn(binary, env, |command| {
            command.stdout(log.reopen()?).stderr(log.reopen()?);
            Ok(())
        })
    }

    fn spawn(
        binary: &std::path::Path,
        env: &HashMap<String, String>,
        output: impl FnOnce(&mut Command) -> Result<()>,
    ) -> Result<Self> {
        let mut command = Command::new(binary);
        command.env_clear().envs(env).stdin(Stdio::null());
        if let Ok(path) = std::env::var("PATH") {
            command.env("PATH", path);
        }
        output(&mut command)?;
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { child: Some(child) })
    }

    /// Whether it has exited (or was killed).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
