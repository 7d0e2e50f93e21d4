//! The control socket of a running `weft up`: `weft kill` and `weft restart`
//! ask through it, from another terminal, the supervisor that owns the
//! processes. The socket is `HOME/control.sock`, readable by its owner
//! only. A request is one line (`kill inventory-1`, `restart inventory`);
//! the answer is lines of `progress …`, then one `ok …` or `error …`.

use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// The longest request line read; anything longer is refused.
const MAX_REQUEST: u64 = 1024;

/// What the socket can be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// SIGKILL one instance (the supervisor restarts it).
    Kill(String),
    /// A rolling restart of a service's instances, with the drain.
    Restart(String),
}

impl Request {
    fn parse(line: &str) -> Result<Self, String> {
        match line.trim().split_once(' ') {
            Some(("kill", name)) => Ok(Self::Kill(name.trim().to_owned())),
            Some(("restart", name)) => Ok(Self::Restart(name.trim().to_owned())),
            _ => Err("unknown request (kill INSTANCE, restart SERVICE)".to_owned()),
        }
    }

    fn line(&self) -> String {
        match self {
            Self::Kill(name) => format!("kill {name}\n"),
            Self::Restart(name) => format!("restart {name}\n"),
        }
    }
}

/// What answers the requests: the supervisor in `weft up`.
pub trait Control: Send + Sync + 'static {
    /// Handles one request, sending progress lines as it goes; the result
    /// is the last line.
    fn handle(
        &self,
        request: Request,
        progress: mpsc::UnboundedSender<String>,
    ) -> impl Future<Output = Result<String, String>> + Send;
}

/// The socket's path in `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("control.sock")
}

/// Binds the socket in `home`, refusing when another `weft up` answers on
/// it and replacing one left by a process that is gone.
pub async fn bind(home: &Path) -> Result<UnixListener> {
    let path = socket_path(home);
    if UnixStream::connect(&path).await.is_ok() {
        bail!(
            "another weft up is running in {} (stop it, or give another --home)",
            home.display()
        );
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests on `listener` until the task is dropped; each
/// connection is served on its own task, so a rolling restart does not hold
/// up a kill.
pub async fn serve<C: Control>(listener: UnixListener, control: Arc<C>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            let _ = answer(stream, control).await;
        });
    }
}

async fn answer<C: Control>(stream: UnixStream, control: Arc<C>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let request = match Request::parse(&line) {
        Ok(r) => r,
        Err(e) => return write.write_all(format!("error {e}\n").as_bytes()).await,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let work = control.handle(request, tx);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            Some(p) = rx.recv() => write.write_all(format!("progress {p}\n").as_bytes()).await?,
        }
    };
    while let Ok(p) = rx.try_recv() {
        write
            .write_all(format!("progress {p}\n").as_bytes())
            .await?;
    }
    let last = match result {
        Ok(done) => format!("ok {done}\n"),
        Err(e) => format!("error {e}\n"),
    };
    write.write_all(last.as_bytes()).await
}

/// Sends `request` to the `weft up` running in `home`, printing its
/// progress; fails with its error.
pub async fn ask(home: &Path, request: &Request) -> Result<()> {
    let path = socket_path(home);
    let stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "no weft up answers at {} (is it running, and is --home the one it uses?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    write.write_all(request.line().as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("progress", text) => eprintln!("{text}"),
            ("ok", text) => {
                if !text.is_empty() {
                    println!("{text}");
                }
                return Ok(());
            }
            ("error", text) => bail!("{text}"),
            _ => bail!("unexpected answer from weft up: {line}"),
        }
    }
    bail!("weft up closed the connection without an answer")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    struct Echo;

    impl Control for Echo {
        async fn handle(
            &self,
            request: Request,
            progress: mpsc::UnboundedSender<String>,
        ) -> Result<String, String> {
            match request {
                Request::Kill(name) if name == "a-1" => Ok("killed a-1".into()),
                Request::Kill(name) => Err(format!("no instance {name}")),
                Request::Restart(name) => {
                    progress.send(format!("{name}-1 restarted")).unwrap();
                    progress.send(format!("{name}-2 restarted")).unwrap();
                    Ok(String::new())
                }
            }
        }
    }

    #[tokio::test]
    async fn requests_get_their_progress_and_their_answer() {
        let home = tempfile::tempdir().unwrap();
        let listener = bind(home.path()).await.unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        // A second weft up in the same home is refused.
        let again = bind(home.path()).await.unwrap_err().to_string();
        assert!(again.contains("another weft up"), "{again}");

        ask(home.path(), &Request::Kill("a-1".into()))
            .await
            .unwrap();
        ask(home.path(), &Request::Restart("a".into()))
            .await
            .unwrap();
        let refused = ask(home.path(), &Request::Kill("b-1".into()))
            .await
            .unwrap_err();
        assert_eq!(refused.to_string(), "no instance b-1");

        // Nonsense is answered with an error; an overlong line is cut at
        // the bound (its sender may see the rest refused); neither is served
        // and the socket still answers after them.
        for sent in ["reboot everything\n".to_owned(), "x".repeat(5000)] {
            let mut raw = UnixStream::connect(socket_path(home.path())).await.unwrap();
            raw.write_all(sent.as_bytes()).await.unwrap();
            let mut answer = String::new();
            match raw.read_to_string(&mut answer).await {
                Ok(_) => assert!(answer.starts_with("error unknown request"), "{answer}"),
                Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
            }
        }
        ask(home.path(), &Request::Kill("a-1".into()))
            .await
            .unwrap();
        server.abort();
        // A socket left behind by a process that is gone is replaced.
        let _ = server.await;
        bind(home.path()).await.unwrap();
    }
}
