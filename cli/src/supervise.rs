//! Instances as supervised processes: each instance of a service is its own
//! process, with its output appended to a log file of its own. One task per
//! instance owns the child and restarts it when it exits unasked, after a
//! backoff that doubles with each quick crash (so a service that cannot start
//! does not spin) and starts over once it has run a while. Asked to stop, the
//! task sends SIGTERM (the drain), then SIGKILL if the drain outlasts its
//! bound; `kill` sends SIGKILL and lets the supervisor restart it, as a crash.
//! The instances run in a process group of their own, so a Ctrl-C at the
//! terminal reaches `weft up` alone, which stops them in dependency order.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

/// The first wait before restarting an instance that exited unasked.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting starts over from the first
/// backoff: it was not crashing at start.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a drain may take before the instance is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What an instance runs and where.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The service it is an instance of.
    pub service: String,
    /// Its instance id (`inventory-1`): its discovery record and log name.
    pub id: String,
    /// The program.
    pub program: PathBuf,
    /// Its environment, over the supervisor's own.
    pub env: BTreeMap<String, String>,
    /// Where it serves gRPC (kept across restarts, so its address is stable).
    pub listen: SocketAddr,
    /// Where it serves /metrics.
    pub metrics: SocketAddr,
    /// The file its output is appended to.
    pub log: PathBuf,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Its process runs.
    Running {
        /// The process id.
        pid: u32,
    },
    /// It exited unasked and is restarted at `at`.
    Waiting {
        /// When the next start is due.
        at: Instant,
    },
    /// It is draining on request.
    Stopping,
    /// It was stopped on request, or could not be started again.
    Stopped,
}

/// What the status table and the control socket show of an instance.
#[derive(Debug, Clone)]
pub struct Status {
    /// The phase.
    pub phase: Phase,
    /// When the current process started.
    pub started: Option<Instant>,
    /// Restarts after unasked exits.
    pub restarts: u32,
    /// How the last process ended, or why it could not start.
    pub last_exit: Option<String>,
}

/// A request to an instance's supervising task.
#[derive(Debug)]
enum Request {
    /// SIGKILL now; restarted as after a crash.
    Kill(oneshot::Sender<Result<u32, String>>),
    /// Drain and start a new process at once.
    Restart(oneshot::Sender<Result<(), String>>),
    /// Drain and stay stopped.
    Stop(oneshot::Sender<()>),
}

/// A supervised instance (a handle: clones ask the same supervisor).
#[derive(Debug, Clone)]
pub struct Instance {
    /// What it runs.
    pub spec: Spec,
    status: Arc<Mutex<Status>>,
    requests: mpsc::Sender<Request>,
    /// Sends a line for each event (exits, restarts) to whoever listens.
    events: mpsc::UnboundedSender<String>,
}

impl Instance {
    /// Starts the instance's process and its supervisor. `events` receives
    /// a line for each exit and restart.
    pub fn start(spec: Spec, events: mpsc::UnboundedSender<String>) -> Result<Self, String> {
        let child = spawn(&spec)?;
        let status = Arc::new(Mutex::new(Status {
            phase: Phase::Running {
                pid: child.id().unwrap_or(0),
            },
            started: Some(Instant::now()),
            restarts: 0,
            last_exit: None,
        }));
        let (requests, rx) = mpsc::channel(4);
        tokio::spawn(supervise(
            spec.clone(),
            child,
            status.clone(),
            rx,
            events.clone(),
        ));
        Ok(Self {
            spec,
            status,
            requests,
            events,
        })
    }

    /// The instance's status now.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// SIGKILL, as a crash: the supervisor restarts it. Returns the pid
    /// killed.
    pub async fn kill(&self) -> Result<u32, String> {
        let (tx, rx) = oneshot::channel();
        self.ask(Request::Kill(tx)).await?;
        rx.await.map_err(|_| "the supervisor stopped".to_owned())?
    }

    /// Drains the process and starts a new one at once; returns once it is
    /// started (not yet healthy).
    pub async fn restart(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.ask(Request::Restart(tx)).await?;
        rx.await.map_err(|_| "the supervisor stopped".to_owned())?
    }

    /// Drains the process and leaves it stopped.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ask(Request::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn ask(&self, request: Request) -> Result<(), String> {
        self.requests
            .send(request)
            .await
            .map_err(|_| format!("{} is not supervised any more", self.spec.id))
    }

    /// Tells whoever listens to events.
    pub fn note(&self, line: String) {
        let _ = self.events.send(line);
    }
}

/// Starts the program with the instance's settings, output to its log.
fn spawn(spec: &Spec) -> Result<Child, String> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| format!("opening {}: {e}", spec.log.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", spec.log.display()))?;
    let mut command = Command::new(&spec.program);
    command
        .envs(&spec.env)
        .env("WEFT_LISTEN", spec.listen.to_string())
        .env("WEFT_METRICS_ADDR", spec.metrics.to_string())
        .env("WEFT_INSTANCE_ID", &spec.id)
        // The instance stops when this process ends, even by SIGKILL (see
        // weft_service::binary::shutdown_signal).
        .env("WEFT_SUPERVISOR_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group: the terminal's Ctrl-C is for weft up.
        .process_group(0)
        // A handle dropped without a stop (weft up failing) kills it.
        .kill_on_drop(true);
    command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", spec.program.display()))
}

/// How a process ended, in words.
fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(9)) => "killed (SIGKILL)".to_owned(),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

/// Sends `signal` to the process `pid`.
pub fn signal(pid: u32, signal: rustix::process::Signal) -> Result<(), String> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("no process id {pid}"))?;
    rustix::process::kill_process(pid, signal).map_err(|e| e.to_string())
}

/// SIGTERM, then SIGKILL if the drain outlasts [`STOP_TIMEOUT`].
async fn drain(child: &mut Child) -> String {
    let Some(pid) = child.id() else {
        return "already ended".to_owned();
    };
    if signal(pid, rustix::process::Signal::TERM).is_err() {
        let _ = child.start_kill();
    }
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => describe(&status),
        Ok(Err(e)) => e.to_string(),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            format!("killed: did not drain within {} s", STOP_TIMEOUT.as_secs())
        }
    }
}

/// Marks the instance running as `child`, from now; returns when it started.
fn running(status: &Mutex<Status>, child: &Child) -> Instant {
    let started = Instant::now();
    let mut s = status.lock().unwrap_or_else(PoisonError::into_inner);
    s.phase = Phase::Running {
        pid: child.id().unwrap_or(0),
    };
    s.started = Some(started);
    started
}

/// One instance's supervisor: owns its process until asked to stop.
async fn supervise(
    spec: Spec,
    mut child: Child,
    status: Arc<Mutex<Status>>,
    mut requests: mpsc::Receiver<Request>,
    events: mpsc::UnboundedSender<String>,
) {
    let set =
        |f: &dyn Fn(&mut Status)| f(&mut status.lock().unwrap_or_else(PoisonError::into_inner));
    let mut backoff = FIRST_BACKOFF;
    let mut started = Instant::now();
    loop {
        // The process runs: wait for it to end or for a request.
        let exit = loop {
            tokio::select! {
                ended = child.wait() => break ended.map(|s| describe(&s)).unwrap_or_else(|e| e.to_string()),
                request = requests.recv() => match request {
                    Some(Request::Kill(reply)) => {
                        let pid = child.id();
                        let killed = match pid {
                            Some(pid) => signal(pid, rustix::process::Signal::KILL).map(|()| pid),
                            None => Err("not running".to_owned()),
                        };
                        let _ = reply.send(killed);
                    }
                    Some(Request::Restart(reply)) => {
                        set(&|s| s.phase = Phase::Stopping);
                        let ended = drain(&mut child).await;
                        let _ = events.send(format!("{} drained ({ended}); starting it again", spec.id));
                        match spawn(&spec) {
                            Ok(next) => {
                                child = next;
                                started = running(&status, &child);
                                set(&|s| s.last_exit = Some(format!("restarted ({ended})")));
                                let _ = reply.send(Ok(()));
                            }
                            Err(e) => {
                                set(&|s| {
                                    s.phase = Phase::Stopped;
                                    s.last_exit = Some(e.clone());
                                });
                                let _ = reply.send(Err(e));
                                return;
                            }
                        }
                    }
                    Some(Request::Stop(reply)) => {
                        set(&|s| s.phase = Phase::Stopping);
                        let ended = drain(&mut child).await;
                        set(&|s| {
                            s.phase = Phase::Stopped;
                            s.started = None;
                            s.last_exit = Some(ended.clone());
                        });
                        let _ = reply.send(());
                        return;
                    }
                    // Nobody can ask anything any more: stop with the rest.
                    None => {
                        let _ = drain(&mut child).await;
                        return;
                    }
                },
            }
        };
        // It ended unasked: a crash. Restart after the backoff.
        if started.elapsed() >= STABLE_AFTER {
            backoff = FIRST_BACKOFF;
        }
        let wait = backoff;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        let at = Instant::now() + wait;
        set(&|s| {
            s.phase = Phase::Waiting { at };
            s.started = None;
            s.restarts += 1;
            s.last_exit = Some(exit.clone());
        });
        let _ = events.send(format!(
            "{} exited ({exit}); restarting in {:.1} s",
            spec.id,
            wait.as_secs_f64()
        ));
        // Waiting, still answering requests: a stop ends it, a restart or
        // a kill starts it now.
        loop {
            let sleep = tokio::time::sleep_until(at.into());
            tokio::pin!(sleep);
            let now = tokio::select! {
                () = &mut sleep => true,
                request = requests.recv() => match request {
                    Some(Request::Stop(reply)) => {
                        set(&|s| s.phase = Phase::Stopped);
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                    Some(Request::Kill(reply)) => {
                        let _ = reply.send(Err(format!("{} is not running (restarting)", spec.id)));
                        false
                    }
                    Some(Request::Restart(reply)) => {
                        let _ = reply.send(Ok(()));
                        true
                    }
                },
            };
            if !now {
                continue;
            }
            match spawn(&spec) {
                Ok(next) => {
                    child = next;
                    started = running(&status, &child);
                    let pid = child.id().unwrap_or(0);
                    let _ = events.send(format!("{} started again (pid {pid})", spec.id));
                    break;
                }
                Err(e) => {
                    let _ = events.send(format!("{}: {e}", spec.id));
                    set(&|s| {
                        s.phase = Phase::Stopped;
                        s.last_exit = Some(e.clone());
                    });
                    return;
                }
            }
        }
    }
}
