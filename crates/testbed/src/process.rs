//! Child processes that die with their owner: Prosody servers, and the
//! `dmuc-master` binary under test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a process gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Poll interval while waiting for a terminated process to exit.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// A child process that is terminated (SIGTERM, then SIGKILL after a grace
/// period) when dropped, also when the test panics.
///
/// The child gets its own process group so that a terminal's Ctrl-C reaches
/// only the test runner, which then drops and stops its children in order.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Option<Child>,
}

/// Spawns `cmd` as a [`ManagedProcess`] named `name` (for logs and errors).
pub fn spawn_process(name: impl Into<String>, mut cmd: Command) -> Result<ManagedProcess> {
    use std::os::unix::process::CommandExt;
    let name = name.into();
    cmd.process_group(0).stdin(Stdio::null());
    let child = cmd.spawn().map_err(Error::io(format!("spawning {name}")))?;
    tracing::debug!(process = %name, pid = child.id(), "spawned");
    Ok(ManagedProcess {
        name,
        child: Some(child),
    })
}

impl ManagedProcess {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Graceful stop: SIGTERM, wait up to a grace period, then SIGKILL.
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            send_signal(child.id(), "TERM");
            let deadline = Instant::now() + TERM_GRACE;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() >= deadline {
                    tracing::warn!(process = %self.name, "did not exit on SIGTERM, killing");
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(EXIT_POLL);
            }
        }
        let _ = child.wait();
        tracing::debug!(process = %self.name, "stopped");
    }

    /// Hard stop: SIGKILL at once (a crash, as far as the process can tell).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(process = %self.name, "killed");
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Sends `SIGsignal` with kill(1): the crate forbids `unsafe`, so no libc.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(error) = status {
        tracing::warn!(pid, %error, "could not run kill");
    }
}

/// Reads a log file, or says why it could not.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The tracing filter of processes under test: everything of ours at
/// debug, the HTTP/2 machinery only at info.
pub const TEST_LOG_FILTER: &str = "debug,h2=info,hyper=info,tower=info,tonic=info,rustls=info";

/// [`TEST_LOG_FILTER`], unless the environment variable `var` sets one.
pub fn test_log_filter(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| TEST_LOG_FILTER.into())
}

/// Configuration of a `dmuc-master` process, written as its TOML file.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// The component JID it connects as, e.g. `conference.a.test`.
    pub component_jid: String,
    /// Prosody's component port, see [`crate::Testbed::component_addr`].
    pub server: std::net::SocketAddr,
    /// The shared secret of the component.
    pub secret: String,
    /// The SQLite database file.
    pub storage_path: PathBuf,
    /// The tracing filter, e.g. `debug`.
    pub log_filter: String,
    /// Raw TOML appended to the file, for sections the testbed does not know.
    pub extra_toml: String,
}

impl MasterConfig {
    /// Renders the TOML configuration file.
    pub fn to_toml(&self) -> String {
        format!(
            "[component]\njid = {}\nserver = {}\nsecret = {}\n\n[storage]\npath = {}\n\n[log]\nfilter = {}\n\n{}",
            toml_str(&self.component_jid),
            toml_str(&self.server.to_string()),
            toml_str(&self.secret),
            toml_str(&self.storage_path.to_string_lossy()),
            toml_str(&self.log_filter),
            self.extra_toml,
        )
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `dmuc-master` (or any binary taking `--config FILE`) run by a test:
/// its config file and log live in a directory of the caller's (usually
/// [`crate::Testbed::dir`]); it is stopped on drop.
#[derive(Debug)]
pub struct MasterProcess {
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    process: Option<ManagedProcess>,
}

impl MasterProcess {
    /// Writes `config` to `dir/<jid>.toml` and starts `binary --config FILE`,
    /// with stdout and stderr appended to `dir/<jid>.log`.
    ///
    /// Returns once the process is spawned; await readiness with
    /// [`crate::Client::wait_for_service`].
    pub fn spawn(binary: impl Into<PathBuf>, config: &MasterConfig, dir: &Path) -> Result<Self> {
        let config_path = dir.join(format!("{}.toml", config.component_jid));
        std::fs::write(&config_path, config.to_toml())
            .map_err(Error::io(format!("writing {}", config_path.display())))?;
        let mut master = Self {
            binary: binary.into(),
            log_path: dir.join(format!("{}.log", config.component_jid)),
            config_path,
            process: None,
        };
        master.start()?;
        Ok(master)
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(Error::io(format!("opening {}", self.log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(Error::io("duplicating the log handle"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config_path)
            .stdout(log)
            .stderr(log2);
        self.process = Some(spawn_process(self.binary.display().to_string(), cmd)?);
        Ok(())
    }

    /// The configuration file path (edit it, then [`Self::restart`]).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything the process printed so far, across restarts.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Waits until the log contains `needle`: for what only the log shows
    /// (a process's internal decisions), checked every 50 ms.
    pub async fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) -> Result<()> {
        self.wait_for_log_line(&[needle], timeout).await
    }

    /// Waits until one line of the log contains every one of `parts`
    /// (say a message and the span field of the peer it is about).
    pub async fn wait_for_log_line(
        &self,
        parts: &[&str],
        timeout: std::time::Duration,
    ) -> Result<()> {
        self.wait_for_log_lines(parts, 1, timeout).await
    }

    /// How many lines of the log contain every one of `parts`.
    pub fn log_lines(&self, parts: &[&str]) -> usize {
        count_lines(&self.log(), parts)
    }

    /// Waits until `count` lines of the log contain every one of `parts`:
    /// for the next time something is logged, take [`Self::log_lines`]
    /// first and wait for one more.
    pub async fn wait_for_log_lines(
        &self,
        parts: &[&str],
        count: usize,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.log();
            if count_lines(&log, parts) >= count {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{parts:?} in {}", self.log_path.display()),
                    timeout,
                    received: tail(&log, 40),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: a crash without any chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// Graceful stop (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate();
        }
    }

    /// Stops the process if it runs (gracefully) and starts it again with
    /// the same configuration file.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start()
    }

    /// `Some(status)` if the process has exited on its own.
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.process
            .as_mut()
            .and_then(ManagedProcess::try_exit_status)
    }
}

fn count_lines(log: &str, parts: &[&str]) -> usize {
    log.lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_config_renders_toml() {
        let config = MasterConfig {
            component_jid: "conference.a.test".into(),
            server: "127.1.2.1:5347".parse().unwrap(),
            secret: "se\"cret".into(),
            storage_path: "/tmp/x/db.sqlite".into(),
            log_filter: "debug".into(),
            extra_toml: String::new(),
        };
        let toml = config.to_toml();
        assert!(toml.contains("[component]\njid = \"conference.a.test\"\nserver = \"127.1.2.1:5347\"\nsecret = \"se\\\"cret\""));
        assert!(toml.contains("[storage]\npath = \"/tmp/x/db.sqlite\""));
        assert!(toml.contains("[log]\nfilter = \"debug\""));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
