//! What the machine and the processes are doing, read from /proc: memory of
//! a process (VmRSS, VmHWM), CPU time of a process and of the whole machine.

use anyhow::{Context, Result};
use serde::Serialize;

/// `/proc/self` or `/proc/<pid>`.
fn proc_dir(pid: Option<u32>) -> String {
    pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"))
}

/// Resident memory of a process, in MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// Resident now (VmRSS).
    pub rss_mb: f64,
    /// Resident at its peak so far (VmHWM).
    pub hwm_mb: f64,
}

pub fn memory(pid: Option<u32>) -> Result<Memory> {
    let path = format!("{}/status", proc_dir(pid));
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{path} has no {name}"))?;
        let kb: f64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{path}: cannot parse {line:?}"))?;
        Ok(kb / 1024.0)
    };
    Ok(Memory {
        rss_mb: field("VmRSS:")?,
        hwm_mb: field("VmHWM:")?,
    })
}

/// CPU time used by a process so far, in clock ticks (USER_HZ).
pub fn process_ticks(pid: Option<u32>) -> Result<u64> {
    let path = format!("{}/stat", proc_dir(pid));
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. utime and stime are fields 14 and 15 of the line,
    // that is 11 and 12 counted from the state field (field 3).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{path}: too few fields"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {i} is not a number"))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Machine-wide CPU ticks: (busy, total), summed over every CPU.
pub fn machine_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat: cpu line is not numbers")?;
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total.saturating_sub(idle), total))
}

/// CPU use between two points in time.
pub struct CpuMeter {
    pids: Vec<Option<u32>>,
    start_machine: (u64, u64),
    start_procs: Vec<u64>,
}

/// Shares of the machine's CPU capacity (all cores = 100 %).
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    /// Busy, all processes.
    pub machine_busy_pct: f64,
    /// The processes measured, in the order given (`None` = this process).
    pub process_pct: Vec<f64>,
}

impl CpuMeter {
    pub fn start(pids: Vec<Option<u32>>) -> Result<Self> {
        let start_procs = pids
            .iter()
            .map(|p| process_ticks(*p))
            .collect::<Result<_>>()?;
        Ok(Self {
            pids,
            start_machine: machine_ticks()?,
            start_procs,
        })
    }

    pub fn stop(&self) -> Result<CpuUse> {
        let (busy, total) = machine_ticks()?;
        let total = total.saturating_sub(self.start_machine.1).max(1) as f64;
        let busy = busy.saturating_sub(self.start_machine.0) as f64;
        let mut process_pct = Vec::with_capacity(self.pids.len());
        for (pid, start) in self.pids.iter().zip(&self.start_procs) {
            let used = process_ticks(*pid)?.saturating_sub(*start) as f64;
            process_pct.push(100.0 * used / total);
        }
        Ok(CpuUse {
            machine_busy_pct: 100.0 * busy / total,
            process_pct,
        })
    }
}

/// A process's open file descriptors and its TCP connections by remote port.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Handles {
    pub fds: usize,
    /// Established TCP connections to `port`, for each port asked about.
    pub tcp_to: Vec<(u16, usize)>,
}

/// Counts the open descriptors of `pid` and, of its sockets, the TCP
/// connections whose remote port is one of `ports` (matched by inode in
/// /proc/net/tcp and tcp6).
pub fn handles(pid: u32, ports: &[u16]) -> Result<Handles> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds = 0;
    let mut sockets = std::collections::HashSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(entry) = entry else { continue };
        fds += 1;
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
        {
            sockets.insert(inode.to_owned());
        }
    }
    let mut tcp_to: Vec<(u16, usize)> = ports.iter().map(|&p| (p, 0)).collect();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st ... inode (column 9); 01 = ESTABLISHED.
            let (Some(remote), Some(state), Some(inode)) = (cols.get(2), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if *state != "01" || !sockets.contains(*inode) {
                continue;
            }
            let port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let Some(slot) = tcp_to.iter_mut().find(|(p, _)| Some(*p) == port) {
                slot.1 += 1;
            }
        }
    }
    Ok(Handles { fds, tcp_to })
}

/// The 1-minute load average (other work on the machine skews a run).
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_total_mb: f64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(String::new, |(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_total_mb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpus,
        cpu_model,
        memory_total_mb,
        kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() -> Result<()> {
        let m = memory(None)?;
        assert!(m.rss_mb > 0.0 && m.hwm_mb >= m.rss_mb * 0.5, "{m:?}");
        let _ = process_ticks(None)?;
        let (busy, total) = machine_ticks()?;
        assert!(busy <= total);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port))?;
        let h = handles(std::process::id(), &[port])?;
        assert!(h.fds >= 3, "{h:?}");
        assert_eq!(h.tcp_to, [(port, 1)], "{h:?}");
        Ok(())
    }
}
