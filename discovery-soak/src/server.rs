//! The server under test as a child process: started on 127.0.0.1, its address read from
//! its `listening on ADDR` line, killed with SIGKILL and started again on the same port.
//! The process is killed when the handle is dropped, so that the soak never leaves it
//! running, whatever happens.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a started server has to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How often, and how far apart, a start on a fixed port is tried again when the port
/// is not free yet.
const BIND_ATTEMPTS: u32 = 20;
const BIND_PAUSE: Duration = Duration::from_millis(100);

/// A running `discovery-server` process.
#[derive(Debug)]
pub struct ServerProcess {
    bin: PathBuf,
    ttl: Duration,
    address: SocketAddr,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `bin` on a free port of 127.0.0.1 with `ttl`, and waits for it to listen.
    pub fn start(bin: PathBuf, ttl: Duration) -> Result<Self, String> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let (child, address) = spawn(&bin, ttl, any_port)?;
        Ok(Self {
            bin,
            ttl,
            address,
            child: Some(child),
        })
    }

    /// Where it listens (the same address after a restart).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it with SIGKILL (`Child::kill` sends SIGKILL on Unix), so that it can neither
    /// answer nor close anything itself, and waits until the process is gone.
    pub fn kill(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child
            .kill()
            .map_err(|e| format!("cannot kill the server (pid {}): {e}", child.id()))?;
        child
            .wait()
            .map_err(|e| format!("cannot wait for the killed server: {e}"))?;
        Ok(())
    }

    /// Starts it again on the same address, trying again for a while if the port is not
    /// free yet.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill()?;
        let mut last_error = String::new();
        for _ in 0..BIND_ATTEMPTS {
            match spawn(&self.bin, self.ttl, self.address) {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(error) => last_error = error,
            }
            std::thread::sleep(BIND_PAUSE);
        }
        Err(format!(
            "cannot start the server on {} again: {last_error}",
            self.address
        ))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the binary on `listen` and reads its address from stdout.
fn spawn(bin: &PathBuf, ttl: Duration, listen: SocketAddr) -> Result<(Child, SocketAddr), String> {
    let mut child = Command::new(bin)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--ttl")
        .arg(humantime::format_duration(ttl).to_string())
        // The bounds a register's own TTL may ask for must hold the server's: widen them
        // to it when the soak's TTL lies outside the defaults (1 s to 1 h).
        .arg("--min-ttl")
        .arg(humantime::format_duration(ttl.min(Duration::from_secs(1))).to_string())
        .arg("--max-ttl")
        .arg(humantime::format_duration(ttl.max(Duration::from_secs(3600))).to_string())
        // Its log goes to our stderr; only warnings, so that a restart's thousands of
        // reconnections do not flood it.
        .env(
            "RUST_LOG",
            std::env::var("SOAK_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (found, address) = mpsc::channel();
    // Reads until the process ends, so that it can never block on a full pipe.
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(address) = parse_listening(&line)
                && let Some(found) = found.take()
            {
                let _ = found.send(address);
            }
        }
    });
    match address.recv_timeout(START_TIMEOUT) {
        Ok(address) => Ok((child, address)),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(format!(
                "{} printed no `listening on ADDR` line within {START_TIMEOUT:?} ({status})",
                bin.display()
            ))
        }
    }
}

/// The address of a `listening on ADDR` line.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("listening on ")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_listening_line() {
        assert_eq!(
            parse_listening("listening on 127.0.0.1:4567"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4567)))
        );
        assert_eq!(parse_listening("compat listening on 127.0.0.1:4567"), None);
        assert_eq!(parse_listening("listening on nowhere"), None);
    }
}
