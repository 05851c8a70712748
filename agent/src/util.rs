//! Small helpers shared by the agent's components.

use std::collections::HashMap;
use std::fmt::Arguments;
use std::time::{Duration, Instant};

/// Logs a warning at most once per interval and reason, reporting how many were suppressed,
/// so a misbehaving client cannot flood the log.
#[derive(Debug)]
pub struct RateLimitedLog {
    every: Duration,
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RateLimitedLog {
    /// At most one line per `every` and reason.
    pub fn new(every: Duration) -> Self {
        RateLimitedLog {
            every,
            last: HashMap::new(),
        }
    }

    /// Logs `msg` under `reason` unless a line for `reason` was logged less than the interval
    /// ago. Returns whether it logged.
    pub fn warn(&mut self, reason: &'static str, msg: Arguments<'_>) -> bool {
        let now = Instant::now();
        match self.last.get_mut(reason) {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => {
                *suppressed += 1;
                false
            }
            Some((at, suppressed)) => {
                tracing::warn!(reason, suppressed = *suppressed, "{msg}");
                *at = now;
                *suppressed = 0;
                true
            }
            None => {
                tracing::warn!(reason, "{msg}");
                self.last.insert(reason, (now, 0));
                true
            }
        }
    }
}

/// Hands memory the allocator holds free back to the operating system.
///
/// Called once a closed period has gone through the sink: closing and publishing 100k series
/// allocate tens of MiB that glibc keeps in its arenas after they are freed, so without this
/// the resident size stays at the close's level until the next close reuses it
/// (`scripts/agent-rss.sh --close`). It walks glibc's free lists and takes its arena locks, so
/// callers run it on a blocking thread, once a period; the time it took is logged at debug
/// level. A no-op where the C library is not glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = Instant::now();
        // SAFETY: malloc_trim(3) has no preconditions: it takes glibc's arena locks itself and
        // only returns whole free pages to the kernel; no pointer is passed, none is
        // invalidated.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "returned free memory to the operating system"
        );
    }
}

/// The id of the group `group` (a number, or a name in `/etc/group`), for the Unix sockets'
/// `*_group` keys; `None` when no such group exists.
pub fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Some(gid);
    }
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.parse::<u32>().ok()?;
        (name == group).then_some(gid)
    })
}

/// Restricts a Unix socket file to its owner (0600), or to owner and group `gid` (0660),
/// for both listeners that offer one (the SDK's and StatsD's).
pub fn restrict_socket(path: &std::path::Path, gid: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_reason_is_logged_once_per_interval() {
        let mut l = RateLimitedLog::new(Duration::from_secs(3600));
        assert!(l.warn("x", format_args!("first")));
        assert!(!l.warn("x", format_args!("second")));
        assert!(l.warn("y", format_args!("other reason")));
    }
}
