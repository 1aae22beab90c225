//! A server's resident memory, read from `/proc/PID/status` (Linux only).

/// The resident set size (`VmRSS`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    status_bytes(pid, "VmRSS:")
}

/// The highest resident set size (`VmHWM`) process `pid` has had, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64, String> {
    status_bytes(pid, "VmHWM:")
}

/// A `kB` line of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, key: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_kib(&status, key).ok_or_else(|| format!("no {key} line in {path}"))
}

/// The `KEY  1234 kB` line of a status file, in bytes.
fn parse_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_vm_rss_line() {
        let status = "Name:\tredis-server\nVmPeak:\t  99 kB\nVmHWM:\t 4096 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(parse_kib(status, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(parse_kib(status, "VmHWM:"), Some(4096 * 1024));
        assert_eq!(parse_kib("Name:\tx\n", "VmRSS:"), None);
    }

    #[test]
    fn reads_our_own() {
        let rss = rss_bytes(std::process::id()).expect("a Linux /proc");
        assert!(rss > 0);
        assert!(peak_rss_bytes(std::process::id()).expect("a Linux /proc") >= rss);
    }
}
