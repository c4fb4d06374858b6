//! A child process whose output is read line by line, with timeouts, and which is killed when
//! dropped.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read, Write as _},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    error::{LabError, Result},
    teardown,
};

/// A running child: stdin is a pipe, stdout and stderr are read by two threads into one stream
/// of lines (also kept as a log for error messages).
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// How often `wait_timeout` polls.
const POLL: Duration = Duration::from_millis(20);

impl Proc {
    /// Spawns `command` (its stdio is replaced by pipes). `name` is used in messages.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(name: &str, mut command: Command) -> Result<Proc> {
        let line = command_line(&command);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: line,
                source,
            })?;
        teardown::register_pid(child.id());
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(out, "", tx.clone(), Arc::clone(&log)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(err, "stderr: ", tx, Arc::clone(&log)));
        }
        Ok(Proc {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            log,
            readers,
            status: None,
        })
    }

    /// The name given at spawn time.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far (stderr lines prefixed with `stderr: `).
    #[must_use]
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for an output line (stdout or stderr) for which `matches` is true and returns it.
    /// Lines before it are consumed.
    ///
    /// # Errors
    /// [`LabError::Timeout`] or [`LabError::Exited`] (both carry the process's output).
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(LabError::Timeout {
                        what: format!("{what} from {}", self.name),
                        after: timeout,
                        log: self.log(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Both pipes closed: the process is gone (or closed its output).
                    let status = self
                        .wait_timeout(Duration::from_secs(2))
                        .ok()
                        .flatten()
                        .map_or_else(|| "still running".to_owned(), |s| s.to_string());
                    return Err(LabError::Exited {
                        process: self.name.clone(),
                        what: what.to_owned(),
                        status,
                        log: self.log(),
                    });
                }
            }
        }
    }

    /// Waits for a line starting with `prefix` and returns the rest of it, trimmed.
    ///
    /// # Errors
    /// See [`Proc::wait_for_line`].
    pub fn wait_for_prefix(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let line =
            self.wait_for_line(&format!("`{prefix}`"), timeout, |l| l.starts_with(prefix))?;
        Ok(line[prefix.len()..].trim().to_owned())
    }

    /// Writes one line to the child's stdin.
    ///
    /// # Errors
    /// When stdin is closed or the write fails.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let what = format!("writing `{line}` to {}", self.name);
        let stdin = self.stdin.as_mut().ok_or_else(|| LabError::Io {
            what: what.clone(),
            source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
        })?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(LabError::io(what))
    }

    /// Closes the child's stdin (it reads end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal (e.g. `libc::SIGINT`) unless the process has already been reaped.
    ///
    /// # Errors
    /// When kill(2) fails.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id()).map_err(|_| LabError::Io {
            what: format!("pid of {}", self.name),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })?;
        // SAFETY: kill(2) on our own child, which has not been reaped yet (checked above).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(LabError::Io {
                what: format!("sending signal {signal} to {}", self.name),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Non-blocking exit check.
    ///
    /// # Errors
    /// When waitpid fails.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(LabError::io(format!("waiting for {}", self.name)))?;
            if self.status.is_some() {
                teardown::unregister_pid(self.child.id());
            }
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit.
    ///
    /// # Errors
    /// When waitpid fails.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `signal`, waits up to `grace`, then SIGKILLs. Returns the exit status and whether
    /// the process exited by itself within the grace period.
    ///
    /// # Errors
    /// When signalling or waiting fails.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> Result<(ExitStatus, bool)> {
        self.signal(signal)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok((status, true));
        }
        self.kill();
        let status =
            self.wait_timeout(Duration::from_secs(5))?
                .ok_or_else(|| LabError::Timeout {
                    what: format!("{} to die after SIGKILL", self.name),
                    after: Duration::from_secs(5),
                    log: self.log(),
                })?;
        Ok((status, false))
    }

    /// Waits for the process to exit and for its output to be fully read.
    ///
    /// # Errors
    /// [`LabError::Timeout`] when it does not exit in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = self
            .wait_timeout(timeout)?
            .ok_or_else(|| LabError::Timeout {
                what: format!("{} to exit", self.name),
                after: timeout,
                log: self.log(),
            })?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// SIGKILL, ignoring errors (used by `Drop` and `stop`).
    fn kill(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
        // Reap it; never block forever and never panic.
        let _ = self.wait_timeout(Duration::from_secs(5));
        teardown::unregister_pid(self.child.id());
    }
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    tag: &'static str,
    tx: Sender<String>,
    log: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
            {
                let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = writeln!(log, "{tag}{line}");
            }
            // The receiver may be gone (the Proc was dropped): keep draining the pipe anyway.
            let _ = tx.send(line);
        }
    })
}

/// Removes ANSI colour escapes (`ESC [ ... letter`), which loggers add on some terminals.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `program arg arg ...` for messages.
#[must_use]
pub fn command_line(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs a command to completion and returns its stdout; fails on a non-zero exit.
///
/// # Errors
/// [`LabError::Spawn`] or [`LabError::Command`].
pub fn run_checked(command: &mut Command) -> Result<String> {
    let line = command_line(command);
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: line.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[32mINFO\u{1b}[0m attached"),
            "INFO attached"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn lines_and_exit() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; read x; echo got $x"]);
        let mut p = Proc::spawn("sh", cmd).unwrap();
        assert_eq!(
            p.wait_for_prefix("one", Duration::from_secs(5)).unwrap(),
            ""
        );
        p.send_line("hello").unwrap();
        assert_eq!(
            p.wait_for_prefix("got ", Duration::from_secs(5)).unwrap(),
            "hello"
        );
        assert!(p.wait_exit(Duration::from_secs(5)).unwrap().success());
        assert!(p.log().contains("stderr: two"));
        // stderr's "two" may still be queued (two reader threads); nothing else will come.
        let err = p
            .wait_for_line("more", Duration::from_secs(1), |l| l == "more")
            .unwrap_err();
        assert!(matches!(err, LabError::Exited { .. }), "{err}");
    }

    #[test]
    fn timeout_carries_the_log() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hi; sleep 30"]);
        let mut p = Proc::spawn("sleeper", cmd).unwrap();
        let err = p
            .wait_for_line("never", Duration::from_millis(300), |l| l == "never")
            .unwrap_err();
        assert!(err.to_string().contains("hi"), "{err}");
        let (status, graceful) = p.stop(libc::SIGTERM, Duration::from_secs(5)).unwrap();
        assert!(graceful && !status.success());
    }
}
