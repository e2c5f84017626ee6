//! Redis for the tests: the shared server's URL (`TOKENGATE_TEST_REDIS_URL`, skipped when unset
//! like the PostgreSQL tests) and a private `redis-server` of a test's own, for tests that stop
//! or hang it (never the shared one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::skip;

pub const REDIS_ENV: &str = "TOKENGATE_TEST_REDIS_URL";
/// How long a PING may take.
const TIMEOUT: Duration = Duration::from_millis(100);
/// Finding a (re)started server.
const RECOVERY: Duration = Duration::from_secs(10);

/// The shared test server's URL, or `None` after [`skip`]ping `test`.
#[track_caller]
pub fn redis_url(test: &str) -> Option<String> {
    match std::env::var(REDIS_ENV) {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            skip(
                "redis",
                test,
                &format!("{REDIS_ENV} is not set (e.g. redis://127.0.0.1:6379)"),
            );
            None
        }
    }
}

/// `redis-server` on 127.0.0.1 at a port of its own, in a temporary directory, saving
/// nothing; killed when dropped.
pub struct PrivateRedis {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// `None` after [`skip`]ping `test` when there is no `redis-server` binary.
    pub fn find(test: &str) -> Option<PrivateRedis> {
        let bin = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/bin")])
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file());
        let Some(bin) = bin else {
            skip(
                "redis",
                test,
                "no redis-server binary (Debian package redis-server)",
            );
            return None;
        };
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Some(PrivateRedis {
            bin,
            dir: tempfile::tempdir().expect("temp dir"),
            port,
            child: None,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server (again, on the same port) and waits until it answers PING.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = self.dir.path().join("redis.log");
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.child = Some(child);
        let addr = self.addr();
        let deadline = Instant::now() + RECOVERY;
        loop {
            if ping(addr).await {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not up in {RECOVERY:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends the server `SIGSTOP` or `SIGCONT`: a hung server (its port still accepts
    /// connections, nothing answers), and one that goes on.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let out = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .output()
            .expect("kill");
        assert!(out.status.success(), "kill -{sig}: {out:?}");
    }

    /// Kills the server (no shutdown: as a crash would) and waits until it is gone.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a Redis server at `addr` answers PING.
pub async fn ping(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let mut buf = [0u8; 7];
    let answered = async {
        s.write_all(b"PING\r\n").await?;
        s.read_exact(&mut buf).await
    };
    matches!(tokio::time::timeout(TIMEOUT, answered).await, Ok(Ok(_))) && &buf == b"+PONG\r\n"
}
