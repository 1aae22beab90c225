//! A binary of the workspace driven end to end: started with flags and variables, the
//! addresses it announces read from its `listening on` lines, signalled, waited for.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

use crate::PATIENCE;

/// A running binary that has said where it listens.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// The address of its `listening on ADDR` line.
    pub addr: SocketAddr,
    /// The lines it printed before that one (such as `compat listening on ADDR`).
    pub before: Vec<String>,
}

impl Process {
    /// Starts `bin` (a path from `env!("CARGO_BIN_EXE_...")`) with `args` and `envs`, and
    /// reads its standard output up to its `listening on ADDR` line. Its logs (standard
    /// error) go to the test's, at `RUST_LOG=warn` unless `envs` says otherwise.
    ///
    /// # Panics
    ///
    /// When it does not start, or ends or prints something else before that line, or not
    /// within [`PATIENCE`].
    pub async fn start(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} does not start: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut before = Vec::new();
        let addr = timeout(PATIENCE, async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .expect("stdout reads")
                    .unwrap_or_else(|| panic!("{bin} ended before `listening on`: {before:?}"));
                match line.strip_prefix("listening on ") {
                    Some(addr) => return addr.parse().expect("an address"),
                    None => before.push(line),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{bin} did not say `listening on` in time"));
        Self {
            child,
            addr,
            before,
        }
    }

    /// The address of an earlier line `{what} listening on ADDR` (`compat`, say).
    pub fn announced(&self, what: &str) -> Option<SocketAddr> {
        let prefix = format!("{what} listening on ");
        self.before
            .iter()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|addr| addr.parse().expect("an address"))
    }

    /// Sends the signal `name` (`TERM`, `INT`, `HUP`).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the process is running");
        let status = std::process::Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -s {name} {pid}");
    }

    /// Waits for the process to exit; kills it and fails the test if it overstays
    /// [`PATIENCE`].
    pub async fn wait(mut self) -> ExitStatus {
        match timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.expect("wait for the process"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!("the process did not exit in time");
            }
        }
    }
}
