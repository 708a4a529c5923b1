//! Helpers for fault tests that need more than one process: the suite's agent as a child
//! process that can be killed with SIGKILL and restarted (`src/bin/aw-test-agent.rs`), and
//! the process's own resident memory from `/proc/self/status`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// What the agent binary prints on stdout once its socket is bound and served.
pub const READY_LINE: &str = "aw-test-agent ready";

/// The suite's [`TestAgent`](crate::TestAgent) serving a Unix socket in a child process.
///
/// The child exits on its own when its stdin closes (the test process died or dropped the
/// handle), so a failed test never leaves an agent behind; dropping the handle also kills it.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    // Held open: the child exits when it reads EOF here.
    _stdin: ChildStdin,
}

impl AgentProcess {
    /// Starts `binary` (the `aw-test-agent` binary) on `socket` and waits up to `limit` for
    /// it to report that it serves.
    ///
    /// # Panics
    /// When it cannot be started or is not ready in time.
    #[must_use]
    pub fn start(binary: &Path, socket: &Path, limit: Duration) -> Self {
        let mut child = Command::new(binary)
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // A thread, so the wait is bounded even if the child never prints anything.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines.next().and_then(Result::ok);
            let _ = tx.send(ready);
            // Keep draining, so the child never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(limit) {
            Ok(Some(line)) if line == READY_LINE => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent process did not become ready: {other:?}");
            }
        }
        AgentProcess {
            child,
            _stdin: stdin,
        }
    }

    /// The child's process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then reaps the child.
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn kill9(mut self) {
        // `Child::kill` is SIGKILL on Unix.
        self.child.kill().expect("SIGKILL the agent");
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of this process, from `/proc/self/status`, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`: resident now.
    pub now_kib: u64,
    /// `VmHWM`: the peak since the start (or the last [`reset_peak_rss`]).
    pub peak_kib: u64,
}

/// Reads `VmRSS` and `VmHWM`.
///
/// # Panics
/// When `/proc/self/status` cannot be read or lacks the fields (not Linux).
#[must_use]
pub fn rss() -> Rss {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
    };
    Rss {
        now_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
    }
}

/// Resets `VmHWM` to the current RSS (`echo 5 > /proc/self/clear_refs`); false where the
/// kernel does not allow it, in which case the peak is the process's lifetime peak.
#[must_use]
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A socket path for a child agent: in `dir`, named `name`.
#[must_use]
pub fn socket_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}
