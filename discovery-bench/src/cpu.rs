//! CPU time of a process and of the whole machine, read from `/proc` (Linux only).
//!
//! Both come in clock ticks of `USER_HZ`, which the kernel fixes at 100 per second in what
//! it reports to user space on every architecture we run on (`getconf CLK_TCK`).

use std::time::Duration;

/// Clock ticks per second in `/proc/PID/stat` and `/proc/stat`.
const TICKS_PER_SEC: f64 = 100.0;

/// The CPU time process `pid` has used so far, user and system, over all its threads.
pub fn process_time(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ticks = parse_process_ticks(&stat).ok_or_else(|| format!("cannot parse {path}"))?;
    Ok(ticks_to_duration(ticks))
}

/// The CPU time this process has used so far.
pub fn own_time() -> Result<Duration, String> {
    process_time(std::process::id())
}

/// The CPU time of the whole machine so far, over all cores: (busy, total). Busy is
/// everything but idle and I/O wait.
pub fn machine_time() -> Result<(Duration, Duration), String> {
    let path = "/proc/stat";
    let stat = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let (busy, total) = parse_machine_ticks(&stat).ok_or_else(|| format!("cannot parse {path}"))?;
    Ok((ticks_to_duration(busy), ticks_to_duration(total)))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / TICKS_PER_SEC)
}

/// `utime + stime` of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses, so fields are counted after the last
/// `)`: there field 3 (the state) comes first, and utime and stime are fields 14 and 15.
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) ticks of the `cpu` line of `/proc/stat`: user nice system idle iowait irq
/// softirq steal (guest time is already counted in user).
fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    if ticks.len() < 5 {
        return None;
    }
    let total: u64 = ticks.iter().sum();
    Some((total - ticks[3] - ticks[4], total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_process_stat_line() {
        let stat = "4242 (disc (very) odd) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_process_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_process_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn parses_the_machine_line() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        // busy = total - idle - iowait
        assert_eq!(parse_machine_ticks(stat), Some((161, 1181)));
    }

    #[test]
    fn reads_our_own() {
        own_time().expect("a Linux /proc");
        let (busy, total) = machine_time().expect("a Linux /proc");
        assert!(busy <= total && !total.is_zero());
    }
}
