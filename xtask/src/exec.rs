//! Running commands: the shared `exec()`, quiet probes, root handling and `PATH`.

use std::{
    env,
    ffi::{OsStr, OsString},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
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

/// A command that needs root for `program`: run directly as root, else through `sudo env ...`
/// (`env` because sudo's `env_reset` would drop variables such as `DEBIAN_FRONTEND`).
pub fn privileged(program: &str, envs: &[(&str, &str)]) -> Result<Command> {
    if is_root() {
        let mut cmd = cmd(program);
        cmd.envs(envs.iter().copied());
        return Ok(cmd);
    }
    let Some(sudo) = which("sudo") else {
        bail!("`{program}` needs root and sudo is not installed: run this as root");
    };
    let mut cmd = cmd(sudo);
    cmd.arg("env");
    cmd.args(envs.iter().map(|(key, value)| format!("{key}={value}")));
    cmd.arg(program);
    Ok(cmd)
}

/// Makes sure the rest of `subcommand` runs as root: if it is not, re-executes this same
/// xtask invocation under `sudo -E` (keeping `PATH`, which sudo's `secure_path` would replace).
/// Returns only when already root.
pub fn ensure_root(subcommand: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    let Some(sudo) = which("sudo") else {
        bail!(
            "`cargo xtask {subcommand}` needs root (it loads eBPF programs and makes network \
             namespaces) and sudo is not installed: run it as root"
        );
    };
    let exe = env::current_exe().context("could not find the xtask executable")?;
    let mut path = OsString::from("PATH=");
    path.push(search_path());
    let mut cmd = cmd(sudo);
    cmd.args([OsStr::new("-E"), OsStr::new("env"), &path, exe.as_os_str()]);
    cmd.args(env::args_os().skip(1));
    let line = display(&cmd);
    eprintln!("$ {line}");
    // `exec` only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not re-run as root with `{line}`"))
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
