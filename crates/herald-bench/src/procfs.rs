//! What the benchmark reads about the server process from Linux `/proc`: resident memory, CPU
//! time, open descriptors; and a sampler that tracks the peak resident memory during a run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Resident memory in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU seconds a process has used (`/proc/PID/stat`, in clock ticks of 1/100 s,
/// the value on every Linux this runs on).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Samples a process's resident memory every 100 ms until dropped; keeps the peak.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let task = tokio::spawn({
            let peak = peak.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    match rss_kib(pid) {
                        Some(rss) => peak.fetch_max(rss, Ordering::Relaxed),
                        None => return,
                    };
                }
            }
        });
        Self { peak, task }
    }

    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::{cpu_seconds, open_fds, parse_vm_rss, rss_kib};

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(cpu_seconds(pid).is_some());
        assert!(open_fds(pid).is_some_and(|fds| fds >= 3));
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  12345 kB\nVmSwap: 0 kB\n"), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
