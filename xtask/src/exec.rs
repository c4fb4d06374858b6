//! Running commands: the shared `exec()`, quiet probes, root handling and `PATH`.

use std::{
    env,
    ffi::{OsStr, OsString},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// Where `cargo install` puts binaries: `$CARGO_INSTALL_ROOT`, else `$CARGO_HOME`, else `~/.cargo`.
pub fn cargo_install_root() -> Result<PathBuf> {
    if let Some(root) = env::var_os("CARGO_INSTALL_ROOT") {
        return Ok(root.into());
    }
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// `PATH` for child commands: the current one with cargo's bin directory in front, so that
/// `bpf-linker` (installed by `cargo install`) is found even where the shell did not add it.
pub fn search_path() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if let Ok(root) = cargo_install_root() {
        let bin = root.join("bin");
        dirs.retain(|dir| *dir != bin);
        dirs.insert(0, bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// A `Command` for `program` whose `PATH` is [`search_path`].
pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", search_path());
    cmd
}

/// The full path of `program` if it is an executable file on [`search_path`].
pub fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&search_path())
        .map(|dir| dir.join(program))
        .find(|path| {
            path.metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Prints the command line, runs it with inherited stdout/stderr, and fails unless it exits 0.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed with {status}");
    }
    Ok(())
}

/// Like [`exec`], but returns what the command printed on stdout instead of showing it
/// (for machine-readable output such as cargo's `--message-format=json`); stderr is shown.
pub fn exec_stdout(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    eprintln!("$ {line}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed with {}", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed invalid UTF-8"))
}

/// Runs a read-only probe (`rustc -vV`, `ldd`, ...) quietly and returns its stdout.
/// Probes are not printed: they run on every invocation and say nothing new.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed invalid UTF-8"))
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The words that run a command as root from here: none when already root, else
/// `sudo -E env PATH=...` (`-E` keeps the environment, e.g. `MPTCP_LOADER_BIN` and `CI`; `env
/// PATH=` because sudo's `secure_path` would replace `PATH`).
fn root_prefix(what: &str) -> Result<Vec<OsString>> {
    if is_root() {
        return Ok(Vec::new());
    }
    let Some(sudo) = which("sudo") else {
        bail!(
            "{what} needs root (it loads eBPF programs, mounts bpffs or makes network \
             namespaces) and sudo is not installed: install sudo, or run this as root"
        );
    };
    let mut path = OsString::from("PATH=");
    path.push(search_path());
    Ok(vec![sudo.into(), "-E".into(), "env".into(), path])
}

/// A command that needs root for `program`, with `envs` set for it: run directly as root, else
/// through `sudo -E env PATH=... KEY=VALUE... program` (everything else, cargo builds in
/// particular, runs as the invoking user).
pub fn privileged(program: impl AsRef<OsStr>, envs: &[(&str, &str)]) -> Result<Command> {
    let program = program.as_ref();
    let prefix = root_prefix(&format!("`{}`", program.to_string_lossy()))?;
    let Some((sudo, rest)) = prefix.split_first() else {
        let mut cmd = cmd(program);
        cmd.envs(envs.iter().copied());
        return Ok(cmd);
    };
    let mut cmd = cmd(sudo);
    cmd.args(rest);
    cmd.args(envs.iter().map(|(key, value)| format!("{key}={value}")));
    cmd.arg(program);
    Ok(cmd)
}

/// `cargo ARGS` (test, run) that builds as the invoking user and runs what it built as root:
/// cargo's target runner (`CARGO_TARGET_<host>_RUNNER`) is the sudo prefix of [`privileged`]
/// when not root, so only the test binaries and programs, which need root, run as root.
pub fn cargo_running_as_root(args: &[&str]) -> Result<Command> {
    let mut cargo = cmd("cargo");
    cargo.args(args);
    let prefix = root_prefix(&format!("`cargo {}`", args.join(" ")))?;
    if !prefix.is_empty() {
        cargo.env(runner_variable()?, runner_value(&prefix)?);
    }
    Ok(cargo)
}

/// `CARGO_TARGET_<HOST TRIPLE>_RUNNER`, the host triple from `rustc -vV`.
fn runner_variable() -> Result<String> {
    let version = capture(cmd("rustc").arg("-vV"))?;
    let host = version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .context("`rustc -vV` names no host")?;
    Ok(runner_variable_for(host))
}

fn runner_variable_for(host: &str) -> String {
    format!(
        "CARGO_TARGET_{}_RUNNER",
        host.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// Cargo splits a runner given in the environment at spaces.
fn runner_value(words: &[OsString]) -> Result<String> {
    let words: Vec<&str> = words
        .iter()
        .map(|w| w.to_str().context("a non-UTF-8 PATH or sudo path"))
        .collect::<Result<_>>()?;
    if words.iter().any(|w| w.contains(char::is_whitespace)) {
        bail!("cargo's runner cannot hold a PATH with spaces ({words:?}): run this as root");
    }
    Ok(words.join(" "))
}

/// The command line as a shell would read it, with the variables set for it in front
/// (except `PATH`, which every command gets from [`cmd`]).
pub fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter(|(key, _)| *key != "PATH");
    let envs = envs.filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), quote(value)))
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_variable_names_the_host_triple() {
        assert_eq!(
            runner_variable_for("x86_64-unknown-linux-gnu"),
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER"
        );
        assert_eq!(
            runner_variable_for("thumbv7em-none-eabihf.x"),
            "CARGO_TARGET_THUMBV7EM_NONE_EABIHF_X_RUNNER"
        );
    }

    #[test]
    fn the_runner_value_is_the_sudo_prefix_or_refused() {
        let words = ["/usr/bin/sudo", "-E", "env", "PATH=/a:/b"].map(OsString::from);
        assert_eq!(
            runner_value(&words).unwrap(),
            "/usr/bin/sudo -E env PATH=/a:/b"
        );
        let spaced = ["/usr/bin/sudo", "-E", "env", "PATH=/my dir:/b"].map(OsString::from);
        assert!(runner_value(&spaced).is_err());
    }
}
