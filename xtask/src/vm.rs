//! `cargo xtask vm-test`: the `BPF_PROG_TEST_RUN` suite, `run` and the end-to-end lab on
//! Debian's older kernels, under qemu.
//!
//! For each kernel series it finds Debian's newest image package of that series through a
//! private apt configuration under `target/vm/` (the machine's own apt sources are left alone),
//! downloads it once and keeps only its `vmlinuz` and the few modules the lab needs ([`MODULES`]).
//! One initramfs serves every kernel: busybox, the test executables, `mptcp-bench`, the loader,
//! `mptcp-peer`, the host's lab programs ([`LAB_PROGRAMS`]), their shared libraries, the
//! fixture captures and an init script that
//! mounts proc, sysfs, devtmpfs and bpffs, loads the modules, runs the steps (see
//! [`init_script`]) and prints a verdict line; each kernel's modules follow it as a second cpio
//! archive in the same file. qemu-system-x86_64 boots it under software emulation (no KVM,
//! which hangs on this kind of machine), and the verdict is read from the serial console.
//!
//! The host's own kernel is not booted here: `cargo xtask test` runs the same tests on it.

use std::{
    collections::BTreeSet,
    env,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    build,
    exec::{capture, cmd, display, exec, exec_stdout, is_root},
    setup::{self, Scope},
};

/// What this command needs on the host besides the build tools: qemu and busybox, the lab
/// programs copied into the VM ([`LAB_PROGRAMS`]), and the decompressors of Debian's modules.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "util-linux",
    "xz-utils",
    "zstd",
    "libxdp1",
    "xdp-tools",
];

/// libxdp's multi-program dispatcher (package `libxdp1`), at the same path in the VM: the
/// suite's multi-program tests load it, and Debian's kernels must accept the firewall as its
/// `freplace` component (`MPTCP_TESTS_REQUIRE_FREPLACE=1` in the init script).
const XDP_DISPATCHER: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o";
/// xdp-tools' loader: the multi-program tests check that `xdp-loader status` (libxdp) reads
/// the dispatcher the firewall built.
const XDP_LOADER: &str = "/usr/sbin/xdp-loader";
/// xdp-filter's program (package `xdp-tools`): the neighbour in the multi-program tests.
const XDP_FILTER: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o";
/// What those tests have `xdp-loader load` add to the firewall's dispatcher.
const XDP_FILTER_IP: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_ip.o";

/// The host programs the end-to-end lab runs, copied into the VM at their host paths with
/// their shared libraries: the tests find them on `PATH`.
const LAB_PROGRAMS: &[&str] = &["ip", "ss", "tc", "ping", "tcpdump", "nsenter"];

/// Kernel modules the lab needs where Debian builds them as modules (their dependencies come
/// along): `veth` for the lab's links, `sch_ingress` and `cls_bpf` for the clsact egress filter
/// `run` uses below 6.6, `tcp_diag` and `mptcp_diag` for `sock_diag` (`ss -ti`, which the join
/// test reads per-subflow bytes from, and the loader's closed-subflow check). The VM has no
/// modprobe to load them on demand.
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf", "tcp_diag", "mptcp_diag"];

/// The file in a kernel's `modules/` that lists the [`MODULES`] it was unpacked for.
const MODULES_WANTED: &str = "wanted";

/// A test the VM runs as a step of its own (named after its target), with
/// `MPTCP_TESTS_REQUIRE_BPF=1` so that a missing piece fails rather than skips.
struct LabTest {
    package: &'static str,
    /// The test target; its executable is `/<target>` in the VM.
    target: &'static str,
    /// The one test of the target the step runs.
    test: &'static str,
    /// Needs MPTCP in the kernel (Debian 11's 5.10 has none): skipped, and said so, without.
    mptcp: bool,
}

/// The lab, in the order the steps run. `run` itself first, with plain traffic (no MPTCP
/// needed): `clsact_egress`, the egress program as a clsact filter (what `run` picks below
/// 6.6) that outlives a killed run, is adopted by the next without a gap, and goes with
/// SIGTERM or `detach`; `link_swap`, that filter and the pinned XDP link keep their place while
/// the next run swaps their programs; `restart`, `--keep-attached`, `detach` and the refusals.
/// Then the end-to-end lab, the real MPTCP stack in two namespaces with `mptcp-loader run
/// --mode enforce`: `e2e_add_addr`, a genuine transfer whose `ADD_ADDR` and join pass, forged
/// `ADD_ADDRs` dropped, a right-HMAC control accepted; `e2e_join`, the validator on both hosts,
/// genuine joins both ways carry data, blind `MP_JOIN` SYNs and third ACKs with a bad HMAC
/// dropped.
const LAB_TESTS: &[LabTest] = &[
    LabTest {
        package: "mptcp-loader",
        target: "clsact_egress",
        test: "a_clsact_egress_filter_survives_a_killed_run_and_is_adopted",
        mptcp: false,
    },
    LabTest {
        package: "mptcp-loader",
        target: "link_swap",
        test: "an_adopted_clsact_filter_keeps_its_place_while_its_program_is_swapped",
        mptcp: false,
    },
    LabTest {
        package: "mptcp-loader",
        target: "restart",
        test: "keep_attached_detach_and_the_refusals",
        mptcp: false,
    },
    LabTest {
        package: "mptcp-tests",
        target: "e2e_add_addr",
        test: "enforce_drops_forged_add_addr_and_passes_genuine",
        mptcp: true,
    },
    LabTest {
        package: "mptcp-tests",
        target: "e2e_join",
        test: "joins_with_validator_enforcing_on_both_hosts",
        mptcp: true,
    },
];

/// busybox-static's binary; its applets are linked at boot by `busybox --install -s`.
const BUSYBOX: &str = "/bin/busybox";

/// The test target of the `mptcp-tests` crate that runs in the VM.
const TEST: &str = "prog_test_run";

/// The benchmark binary of the same crate: `--quick` loads all three programs, the tc egress one
/// too (the suite loads only the XDP ones), and runs each through `BPF_PROG_TEST_RUN`.
const BENCH: &str = "mptcp-bench";

const DEBIAN: &str = "http://deb.debian.org/debian";
const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Debian's meta package that depends on the newest image package of its suite.
const META_PACKAGE: &str = "linux-image-amd64";

/// Package lists younger than this are not fetched again (unless `--refresh`).
const LIST_MAX_AGE: Duration = Duration::from_hours(24);

/// The init script's lines on the console: it started (the kernel has booted), a step started
/// or ended, and the verdict.
const MARK_INIT: &str = "mptcp-vm: init:";
const MARK_STEP: &str = "mptcp-vm: step";
const MARK_RESULT: &str = "mptcp-vm: result:";
/// A step's result when it could not run on this kernel (not a failure).
const SKIPPED: &str = "skipped";

/// The test that shows whether the programs load at all (it loads them once and sends two
/// frames); the rest of the suite runs only if it passes.
const PROBE: &str = "unknown_connections_and_echoes_pass";

/// A kernel series users run, and where Debian ships it.
struct Kernel {
    series: &'static str,
    /// (archive, suite) pairs of the private apt configuration, component `main`.
    suites: &'static [(&'static str, &'static str)],
    /// The image package `linux-image-amd64` must resolve to, e.g. `linux-image-6.1.0-`.
    package_prefix: &'static str,
}

const KERNELS: [Kernel; 3] = [
    Kernel {
        series: "5.10",
        suites: &[
            (DEBIAN, "bullseye"),
            (DEBIAN, "bullseye-updates"),
            (DEBIAN_SECURITY, "bullseye-security"),
        ],
        package_prefix: "linux-image-5.10.0-",
    },
    Kernel {
        series: "6.1",
        suites: &[
            (DEBIAN, "bookworm"),
            (DEBIAN, "bookworm-updates"),
            (DEBIAN_SECURITY, "bookworm-security"),
        ],
        package_prefix: "linux-image-6.1.0-",
    },
    Kernel {
        series: "6.12",
        suites: &[(DEBIAN, "bookworm-backports")],
        package_prefix: "linux-image-6.12.",
    },
];

#[derive(clap::Args)]
pub struct Args {
    /// The kernel series to boot.
    #[arg(long, default_value = "all", value_parser = ["5.10", "6.1", "6.12", "all"])]
    kernel: String,
    /// Seconds one VM may run, boot and tests, before it is stopped and counted as failed.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Look for a newer kernel package even if the package lists are less than a day old.
    #[arg(long)]
    refresh: bool,
    /// Run only the `load` step and the end-to-end lab, not `suite` and `bench`.
    #[arg(long)]
    lab_only: bool,
    /// Instead of the steps, run the `prog_test_run` executable with these arguments after
    /// `--test-threads=1`, e.g. a name filter.
    #[arg(last = true)]
    test_flags: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    setup::ensure(Scope::Build, false)?;
    setup::ensure_debian_packages(HOST_PACKAGES)?;
    let workspace = Workspace::probe()?;
    let vm_dir = workspace.target.join("vm");
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|kernel| args.kernel == "all" || args.kernel == kernel.series)
        .collect();

    // The downloads first, so that a network problem shows before the build.
    let images = kernels
        .iter()
        .map(|kernel| fetch_kernel(kernel, &vm_dir, args.refresh))
        .collect::<Result<Vec<_>>>()?;
    let executables = build_executables()?;
    let common = initramfs(&workspace, &executables, &init_script(args))?;

    let timeout = Duration::from_secs(args.timeout);
    let mut outcomes = Vec::new();
    for (kernel, image) in kernels.iter().zip(&images) {
        let dir = vm_dir.join(kernel.series);
        let initramfs = dir.join("initramfs.cpio");
        write_kernel_initramfs(&initramfs, &common, image)?;
        let log = dir.join("console.log");
        outcomes.push(boot(kernel.series, image, &initramfs, &log, timeout)?);
    }

    print_summary(&outcomes, start.elapsed());
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| !outcome.passed())
        .map(|outcome| outcome.series)
        .collect();
    if !failed.is_empty() {
        bail!("the suite failed on kernel {}", failed.join(", "));
    }
    Ok(())
}

/// The two paths of `cargo metadata` this command needs.
struct Workspace {
    root: PathBuf,
    target: PathBuf,
}

impl Workspace {
    fn probe() -> Result<Self> {
        let metadata =
            capture(cmd("cargo").args(["metadata", "--format-version", "1", "--no-deps"]))?;
        let metadata: Value =
            serde_json::from_str(&metadata).context("parsing `cargo metadata` output")?;
        let path = |field: &str| {
            metadata[field]
                .as_str()
                .map(PathBuf::from)
                .with_context(|| format!("`cargo metadata` has no {field}"))
        };
        Ok(Self {
            root: path("workspace_root")?,
            target: path("target_directory")?,
        })
    }

    /// The captures the tests replay, with their `.expected` files: `$MPTCP_FIXTURES_DIR`, else
    /// the repository's `tests/fixtures/` (where `mptcp_common::testing::fixture` looks by
    /// default).
    fn fixtures(&self) -> Result<Vec<PathBuf>> {
        let dir = env::var_os("MPTCP_FIXTURES_DIR")
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| self.root.join("tests/fixtures"), PathBuf::from);
        let entries = fs::read_dir(&dir)
            .with_context(|| format!("reading the fixture directory {}", dir.display()))?;
        let mut pcaps: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext == "pcap" || ext == "expected")
            })
            .collect();
        if !pcaps
            .iter()
            .any(|path| path.extension().is_some_and(|ext| ext == "pcap"))
        {
            bail!("no .pcap fixtures in {}", dir.display());
        }
        pcaps.sort();
        Ok(pcaps)
    }
}

// ---- Kernels ------------------------------------------------------------------------------

/// A kernel ready to boot: `kernels/<package>/` holds its `vmlinuz`, its `config` and
/// `modules/`, the [`MODULES`] and their dependencies named `NN-name.ko` in load order.
struct KernelImage {
    package: String,
    dir: PathBuf,
}

impl KernelImage {
    fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// Renamed into place last, with the [`MODULES_WANTED`] list: the download is complete and
    /// has the modules this version of the command needs.
    fn modules(&self) -> PathBuf {
        self.dir.join("modules")
    }

    fn is_cached(&self) -> bool {
        self.vmlinuz().is_file()
            && fs::read_to_string(self.modules().join(MODULES_WANTED))
                .is_ok_and(|wanted| wanted == MODULES.join(" "))
    }
}

/// Resolves the series' newest image package, and downloads and unpacks it unless cached.
/// Without network, falls back to the package resolved last time if its image is cached.
fn fetch_kernel(kernel: &Kernel, vm_dir: &Path, refresh: bool) -> Result<KernelImage> {
    let apt = PrivateApt::new(vm_dir.join("apt").join(kernel.series), kernel.suites)?;
    let image_of = |package: &str| KernelImage {
        package: package.to_owned(),
        dir: vm_dir.join("kernels").join(package),
    };
    let remembered = apt.root.join("resolved");
    let package = match apt.update(refresh).and_then(|()| apt.image_package(kernel)) {
        Ok(package) => {
            fs::write(&remembered, &package)
                .with_context(|| format!("writing {}", remembered.display()))?;
            package
        }
        Err(err) => {
            let cached = fs::read_to_string(&remembered)
                .map(|package| package.trim().to_owned())
                .ok()
                .filter(|package| image_of(package).is_cached());
            let Some(package) = cached else {
                return Err(err.context(format!("finding Debian's {} kernel", kernel.series)));
            };
            eprintln!("vm-test: {err:#}; using the cached {package}");
            package
        }
    };
    let image = image_of(&package);
    if image.is_cached() {
        eprintln!("vm-test: ok  kernel {}: {package} (cached)", kernel.series);
    } else {
        apt.download_image(&image)?;
    }
    Ok(image)
}

/// apt with its own sources, lists and cache under `root`: it finds and downloads packages of
/// other suites without touching the machine's apt configuration, and needs no root.
struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    fn new(root: PathBuf, suites: &[(&str, &str)]) -> Result<Self> {
        for dir in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut sources = String::new();
        for (archive, suite) in suites {
            writeln!(
                sources,
                "deb [signed-by={DEBIAN_KEYRING}] {archive} {suite} main"
            )?;
        }
        let list = root.join("sources.list");
        fs::write(&list, sources).with_context(|| format!("writing {}", list.display()))?;
        Ok(Self { root })
    }

    fn command(&self, program: &str) -> Command {
        let path = |name: &str| self.root.join(name).display().to_string();
        let mut options = vec![
            ("Dir::Etc::SourceList", path("sources.list")),
            ("Dir::Etc::SourceParts", path("sources.list.d")),
            ("Dir::Etc::Preferences", path("preferences")),
            ("Dir::Etc::PreferencesParts", path("sources.list.d")),
            ("Dir::State::Lists", path("lists")),
            ("Dir::Cache", path("cache")),
        ];
        if is_root() {
            // apt would otherwise download as `_apt`, who may not write into target/.
            options.push(("APT::Sandbox::User", "root".to_owned()));
        }
        let mut command = cmd(program);
        for (key, value) in options {
            command.arg("-o").arg(format!("{key}={value}"));
        }
        command
    }

    /// `apt-get update`, unless the lists are younger than [`LIST_MAX_AGE`].
    fn update(&self, refresh: bool) -> Result<()> {
        let stamp = self.root.join("updated");
        let age = fs::metadata(&stamp)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok());
        if !refresh && age.is_some_and(|age| age < LIST_MAX_AGE) {
            return Ok(());
        }
        exec(self.command("apt-get").args(["update", "-q"]))?;
        fs::write(&stamp, "").with_context(|| format!("writing {}", stamp.display()))
    }

    /// The image package the meta package depends on, e.g. `linux-image-6.1.0-56-amd64`.
    fn image_package(&self, kernel: &Kernel) -> Result<String> {
        let depends = capture(self.command("apt-cache").args(["depends", META_PACKAGE]))?;
        depends
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|package| package.starts_with(kernel.package_prefix))
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "{META_PACKAGE} depends on no {}* package: {}",
                    kernel.package_prefix,
                    depends.trim()
                )
            })
    }

    /// Downloads the image package and keeps only its kernel image (as `vmlinuz`), its config
    /// and the [`MODULES`] with their dependencies.
    fn download_image(&self, image: &KernelImage) -> Result<()> {
        let package = &image.package;
        let scratch = self.root.join("download");
        if scratch.exists() {
            fs::remove_dir_all(&scratch)
                .with_context(|| format!("removing {}", scratch.display()))?;
        }
        fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        exec(
            self.command("apt-get")
                .args(["download", "-q", package])
                .current_dir(&scratch),
        )?;
        let deb = fs::read_dir(&scratch)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .with_context(|| format!("apt-get download left no .deb for {package}"))?;

        unpack_deb(&deb, &scratch, &["./boot/vmlinuz-*", "./boot/config-*"])?;
        fs::create_dir_all(&image.dir)
            .with_context(|| format!("creating {}", image.dir.display()))?;
        for entry in fs::read_dir(scratch.join("boot"))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let target = if name.starts_with("vmlinuz-") {
                image.vmlinuz()
            } else {
                image.dir.join("config")
            };
            fs::rename(&path, &target).with_context(|| format!("moving {}", path.display()))?;
        }
        if !image.vmlinuz().is_file() {
            bail!("{package} has no /boot/vmlinuz-*");
        }

        // The modules and, from their `depends=` entries, the modules they need: the package
        // has no modules.dep (depmod writes it on installation).
        let unpacked = image.dir.join("modules.partial");
        if unpacked.exists() {
            fs::remove_dir_all(&unpacked)
                .with_context(|| format!("removing {}", unpacked.display()))?;
        }
        fs::create_dir_all(&unpacked)
            .with_context(|| format!("creating {}", unpacked.display()))?;
        let mut depends: Vec<(String, Vec<String>)> = Vec::new();
        let mut wanted: Vec<String> = MODULES.iter().map(|name| (*name).to_owned()).collect();
        while !wanted.is_empty() {
            let patterns: Vec<String> = wanted
                .iter()
                .map(|name| format!("./lib/modules/*/{name}.ko*"))
                .collect();
            let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
            // A module built into this kernel is not in the package; tar then fails, so
            // extract one at a time and skip those it does not find.
            for (name, pattern) in wanted.iter().zip(&patterns) {
                if unpack_deb(&deb, &scratch, &[pattern]).is_err() {
                    eprintln!("vm-test: {package} has no module {name} (built in?)");
                    depends.push((name.clone(), Vec::new()));
                }
            }
            for path in files_under(&scratch.join("lib"))? {
                let name = module_name(&path.to_string_lossy()).replace('-', "_");
                if depends.iter().any(|(known, _)| *known == name) {
                    continue;
                }
                let ko = unpacked.join(format!("{name}.ko"));
                decompress_module(&path, &ko)?;
                let needs = module_depends(&fs::read(&ko)?);
                depends.push((name, needs));
            }
            fs::remove_dir_all(scratch.join("lib"))?;
            wanted = depends
                .iter()
                .flat_map(|(_, needs)| needs)
                .filter(|need| !depends.iter().any(|(known, _)| known == *need))
                .cloned()
                .collect();
            wanted.sort();
            wanted.dedup();
        }
        let mut modules = 0;
        for (index, name) in module_load_order(&depends).iter().enumerate() {
            let ko = unpacked.join(format!("{name}.ko"));
            if ko.is_file() {
                fs::rename(&ko, unpacked.join(format!("{index:02}-{name}.ko")))?;
                modules += 1;
            }
        }
        fs::write(unpacked.join(MODULES_WANTED), MODULES.join(" "))?;
        if image.modules().exists() {
            fs::remove_dir_all(image.modules())?;
        }
        fs::rename(&unpacked, image.modules())
            .with_context(|| format!("moving {}", unpacked.display()))?;
        fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
        eprintln!(
            "vm-test: ok  kernel image {} and {} module(s)",
            image.vmlinuz().display(),
            modules
        );
        Ok(())
    }
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x -C DIR --wildcards PATTERNS`.
fn unpack_deb(deb: &Path, dir: &Path, patterns: &[&str]) -> Result<()> {
    let mut unpack = cmd("dpkg-deb");
    unpack.arg("--fsys-tarfile").arg(deb).stdout(Stdio::piped());
    let mut untar = cmd("tar");
    untar
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .arg("--wildcards")
        .args(patterns);
    eprintln!("$ {} | {}", display(&unpack), display(&untar));
    let mut unpacking = unpack.spawn().context("could not start dpkg-deb")?;
    let archive = unpacking.stdout.take().context("dpkg-deb has no stdout")?;
    let untarred = untar
        .stdin(archive)
        .status()
        .context("could not start tar")?;
    let unpacked = unpacking.wait().context("waiting for dpkg-deb")?;
    if !unpacked.success() || !untarred.success() {
        bail!(
            "unpacking {} failed: dpkg-deb {unpacked}, tar {untarred}",
            deb.display()
        );
    }
    Ok(())
}

/// `kernel/net/sched/cls_bpf.ko.xz` -> `cls_bpf`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split_once(".ko").map_or(file, |(name, _)| name)
}

/// Every file below `dir`.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// Writes the module `source` (`.ko`, `.ko.xz` or `.ko.zst`) uncompressed to `target`, for
/// busybox's insmod.
fn decompress_module(source: &Path, target: &Path) -> Result<()> {
    let name = source.to_string_lossy();
    let program = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => {
            return fs::rename(source, target)
                .with_context(|| format!("moving {}", source.display()));
        }
    };
    let output = cmd(program)
        .arg("-dc")
        .arg(source)
        .output()
        .with_context(|| format!("could not start {program}"))?;
    if !output.status.success() {
        bail!("{program} -dc {name} failed: {}", output.status);
    }
    fs::write(target, output.stdout).with_context(|| format!("writing {}", target.display()))
}

/// The modules a module needs: its `.modinfo` string `depends=a,b` (NUL-separated strings).
fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|byte| *byte == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The modules in an order `insmod` can follow: each after those it depends on.
fn module_load_order(depends: &[(String, Vec<String>)]) -> Vec<String> {
    fn visit(name: &str, depends: &[(String, Vec<String>)], order: &mut Vec<String>) {
        if order.iter().any(|known| known == name) {
            return;
        }
        // Dependencies first; a cycle cannot occur (the kernel refuses to build one).
        if let Some((_, needs)) = depends.iter().find(|(known, _)| known == name) {
            for need in needs {
                visit(need, depends, order);
            }
        }
        order.push(name.to_owned());
    }
    let mut order = Vec::new();
    for (name, _) in depends {
        visit(name, depends, &mut order);
    }
    order
}

// ---- The initramfs ------------------------------------------------------------------------

/// The executables the VM runs, each at `/<name>`: the test targets [`TEST`] and
/// [`LAB_TESTS`], [`BENCH`], the loader and `mptcp-peer`.
struct Executables {
    /// (name, path on the host).
    all: Vec<(String, PathBuf)>,
    /// The loader on the host: the loader's tests run it from there (compiled in).
    loader: PathBuf,
}

/// The loader's and the peer's names in the VM; the init script points the tests at them.
const LOADER: &str = "mptcp-loader";
const PEER: &str = crate::build::PEER;

/// `cargo build` of the loader (which builds the eBPF object), then `cargo test --no-run` for
/// the test targets of each package, which builds the tests crate's binaries too; returns the
/// executables cargo reports.
fn build_executables() -> Result<Executables> {
    let loader = build::build_loader()?;
    let mut artifacts: Vec<Value> = Vec::new();
    for package in ["mptcp-tests", "mptcp-loader"] {
        let mut command = cmd("cargo");
        command.args(["test", "--package", package, "--release"]);
        let targets = LAB_TESTS
            .iter()
            .filter(|test| test.package == package)
            .map(|test| test.target);
        let targets: Vec<&str> = if package == "mptcp-tests" {
            std::iter::once(TEST).chain(targets).collect()
        } else {
            targets.collect()
        };
        for target in targets {
            command.args(["--test", target]);
        }
        command.args(["--no-run", "--message-format=json-render-diagnostics"]);
        let messages = exec_stdout(&mut command)?;
        artifacts.extend(
            messages
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|message| message["reason"] == "compiler-artifact"),
        );
    }
    let executable = |name: &str| {
        artifacts
            .iter()
            .filter(|artifact| artifact["target"]["name"] == name)
            .find_map(|artifact| artifact["executable"].as_str().map(PathBuf::from))
            .with_context(|| format!("cargo reported no executable for the target {name}"))
    };
    let mut all = vec![(LOADER.to_owned(), loader.clone())];
    for name in [TEST, BENCH, PEER]
        .into_iter()
        .chain(LAB_TESTS.iter().map(|test| test.target))
    {
        all.push((name.to_owned(), executable(name)?));
    }
    Ok(Executables { all, loader })
}

/// The shared libraries `ldd` lists for `exe`, loader included (none for a static binary).
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let output = cmd("ldd")
        .arg(exe)
        .output()
        .with_context(|| format!("could not run ldd on {}", exe.display()))?;
    // ldd exits non-zero for "not a dynamic executable".
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(listing
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no path.
            let path = line.split_once("=>").map_or(line, |(_, right)| right);
            path.split_whitespace().next()
        })
        .filter(|path| path.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Where a lab program is on the host: the system directories only, so that a shim earlier on
/// `PATH` is not taken for the program.
fn system_program(name: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .with_context(|| format!("`{name}` is not installed on this machine"))
}

/// The part of the initramfs every kernel shares, as a finished cpio archive.
fn initramfs(workspace: &Workspace, executables: &Executables, init: &str) -> Result<Vec<u8>> {
    let read = |path: &Path| fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut archive = Cpio::default();
    for dir in [
        "proc", "sys", "tmp", "run", "root", "sbin", "usr/bin", "usr/sbin",
    ] {
        archive.dir(dir);
    }
    // iproute2 keeps named namespaces in /var/run/netns, the tests look in /run/netns.
    archive.symlink("var/run", "../run");
    // tcpdump -Z root looks the user up.
    archive.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    archive.file("etc/group", 0o644, b"root:x:0:\n");
    // The kernel opens /dev/console for init before anything is mounted.
    archive.char_device("dev/console", 5, 1);
    archive.char_device("dev/null", 1, 3);
    archive.file("init", 0o755, init.as_bytes());
    archive.file("bin/busybox", 0o755, &read(Path::new(BUSYBOX))?);
    let mut elves: Vec<PathBuf> = vec![PathBuf::from(BUSYBOX)];
    for (name, path) in &executables.all {
        archive.file(name, 0o755, &read(path)?);
        elves.push(path.clone());
    }
    // Where the loader's tests look for it (`CARGO_BIN_EXE_mptcp-loader`, compiled in).
    archive.symlink(&in_archive(&executables.loader), &format!("/{LOADER}"));

    // The lab programs at their host paths (symlinks resolved, and kept as symlinks).
    for name in LAB_PROGRAMS {
        let path = system_program(name)?;
        let resolved =
            fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))?;
        archive.file(&in_archive(&resolved), 0o755, &read(&resolved)?);
        if resolved != path {
            archive.symlink(&in_archive(&path), &resolved.display().to_string());
        }
        elves.push(resolved);
    }
    archive.file(
        &in_archive(Path::new(XDP_LOADER)),
        0o755,
        &read(Path::new(XDP_LOADER))?,
    );
    elves.push(PathBuf::from(XDP_LOADER));
    for object in [XDP_DISPATCHER, XDP_FILTER, XDP_FILTER_IP] {
        archive.file(
            &in_archive(Path::new(object)),
            0o644,
            &read(Path::new(object))?,
        );
    }

    let mut libraries = Vec::new();
    for elf in &elves {
        libraries.extend(shared_libraries(elf)?);
    }
    libraries.sort();
    libraries.dedup();
    for library in &libraries {
        // Same path as on the host, so the executables' interpreter path holds.
        archive.file(&in_archive(library), 0o755, &read(library)?);
    }
    let fixtures = workspace.fixtures()?;
    for fixture in &fixtures {
        let name = fixture.file_name().unwrap_or_default().to_string_lossy();
        archive.file(&format!("fixtures/{name}"), 0o644, &read(fixture)?);
    }
    let bytes = archive.finish();
    eprintln!(
        "vm-test: ok  initramfs ({} KiB: busybox, {} executables, {}, {} libraries, {} fixtures)",
        bytes.len() >> 10,
        executables.all.len(),
        LAB_PROGRAMS.join(" "),
        libraries.len(),
        fixtures.len()
    );
    Ok(bytes)
}

/// A host path as an archive entry name (no leading slash).
fn in_archive(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_owned()
}

/// The shared archive followed by a second one with the kernel's modules in `/modules/`: the
/// kernel unpacks concatenated archives one after the other.
fn write_kernel_initramfs(path: &Path, common: &[u8], image: &KernelImage) -> Result<()> {
    let mut archive = Cpio::default();
    archive.dir("modules");
    let mut modules: Vec<PathBuf> = fs::read_dir(image.modules())
        .with_context(|| format!("reading {}", image.modules().display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ko"))
        .collect();
    modules.sort();
    for module in &modules {
        let name = module.file_name().unwrap_or_default().to_string_lossy();
        let bytes = fs::read(module).with_context(|| format!("reading {}", module.display()))?;
        archive.file(&format!("modules/{name}"), 0o644, &bytes);
    }
    let mut bytes = common.to_vec();
    bytes.extend_from_slice(&archive.finish());
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

/// PID 1 in the VM: mount what the tests and aya read, load the modules, run the steps, print
/// the verdict, power off. `poweroff -f` makes qemu exit (`-no-reboot`); a kernel panic does
/// too (`panic=-1`).
///
/// Without test arguments the steps are: `load`, the one test [`PROBE`]; `suite`, all the
/// others; `bench`, [`BENCH`] `--quick` (all programs load and run); then one step per
/// [`LAB_TESTS`] test, those that need MPTCP skipped (and said so) on a kernel without it. When
/// `load` fails (the verifier rejects the programs, and then every test fails the same way
/// after the same minute of emulated verification) the others are skipped. `--lab-only` leaves
/// out `suite` and `bench`.
/// With test arguments there is one step, `suite`, with those arguments.
fn init_script(args: &Args) -> String {
    let test = format!("/{TEST} --test-threads=1");
    let steps = if args.test_flags.is_empty() {
        let mut steps = format!("if step load {test} --exact {PROBE}; then\n");
        if !args.lab_only {
            writeln!(steps, "    step suite {test} --exact --skip {PROBE}").unwrap();
            writeln!(steps, "    step bench /{BENCH} --quick --out /tmp/bench").unwrap();
        }
        writeln!(
            steps,
            "    export MPTCP_LOADER_BIN=/{LOADER} MPTCP_PEER_BIN=/{PEER} \
             MPTCP_TESTS_REQUIRE_BPF=1"
        )
        .unwrap();
        for LabTest {
            target,
            test,
            mptcp,
            ..
        } in LAB_TESTS
        {
            let run =
                format!("step {target} /{target} --test-threads=1 --nocapture --exact {test}");
            if *mptcp {
                writeln!(
                    steps,
                    "    if [ -e /proc/sys/net/mptcp/enabled ]; then {run}; \
                     else skip {target} \"this kernel has no MPTCP\"; fi"
                )
                .unwrap();
            } else {
                writeln!(steps, "    {run}").unwrap();
            }
        }
        steps + "fi\n"
    } else {
        let mut command = format!("step suite {test}");
        for arg in &args.test_flags {
            write!(command, " '{}'", arg.replace('\'', r"'\''")).unwrap();
        }
        command + "\n"
    };
    format!(
        r#"#!/bin/busybox sh
# The lab's programs (in /usr/bin) win over busybox's applets of the same name.
/bin/busybox --install -s 2>/dev/null
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf || echo "mptcp-vm: cannot mount bpffs"
for module in /modules/*.ko; do
    [ -e "$module" ] || continue
    insmod "$module" || echo "mptcp-vm: insmod $module failed"
done
# Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
ulimit -l unlimited 2>/dev/null
btf=no
[ -e /sys/kernel/btf/vmlinux ] && btf=yes
echo "{MARK_INIT} kernel $(uname -r), $(nproc) CPU, BTF $btf, modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
cd /tmp
export MPTCP_FIXTURES_DIR=/fixtures
export MPTCP_TESTS_REQUIRE_FREPLACE=1
export MPTCP_LOADER_BIN=/{LOADER}
verdict=PASS
step() {{
    name=$1
    shift
    echo "{MARK_STEP} $name: start"
    "$@"
    code=$?
    if [ "$code" = 0 ]; then
        echo "{MARK_STEP} $name: ok"
    else
        echo "{MARK_STEP} $name: FAILED (exit code $code)"
        verdict=FAIL
    fi
    return "$code"
}}
skip() {{
    echo "{MARK_STEP} $1: start"
    echo "{MARK_STEP} $1: {SKIPPED} ($2)"
}}
{steps}echo "{MARK_RESULT} $verdict"
poweroff -f
"#
    )
}

/// A "newc" cpio archive, the format the kernel unpacks as initramfs, written in memory.
/// Entries are owned by root; parent directories are added before their contents.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    dirs: BTreeSet<String>,
    inode: u32,
}

impl Cpio {
    const DIR: u32 = 0o040_000;
    const FILE: u32 = 0o100_000;
    const CHAR_DEVICE: u32 = 0o020_000;
    const SYMLINK: u32 = 0o120_000;

    fn dir(&mut self, path: &str) {
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, Self::DIR | 0o755, (0, 0), &[]);
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent_of(path);
        self.entry(path, Self::FILE | mode, (0, 0), data);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parent_of(path);
        self.entry(path, Self::SYMLINK | 0o777, (0, 0), target.as_bytes());
    }

    fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.parent_of(path);
        self.entry(path, Self::CHAR_DEVICE | 0o600, (major, minor), &[]);
    }

    fn parent_of(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let size = u32::try_from(data.len()).expect("initramfs entry over 4 GiB");
        let name_size = u32::try_from(name.len() + 1).expect("name too long");
        // magic, then ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check, each as 8 hex digits.
        let fields = [
            self.inode, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

// ---- Booting ------------------------------------------------------------------------------

/// What one VM did.
struct Outcome {
    series: &'static str,
    package: String,
    /// `Ok(())` on the init script's PASS, else why not.
    verdict: Result<(), String>,
    console: Console,
    total_secs: f64,
    log: PathBuf,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.verdict.is_ok()
    }
}

/// What the summary reports, read from the console line by line.
#[derive(Default)]
struct Console {
    /// The init script's first line (kernel release, CPUs, BTF) and when it came.
    kernel: Option<String>,
    booted_secs: Option<f64>,
    steps: Vec<StepReport>,
    /// The text after [`MARK_RESULT`]: `PASS` or `FAIL`.
    verdict: Option<String>,
    /// `test NAME ... FAILED` lines and panic locations.
    failures: Vec<String>,
    /// Each distinct verifier rejection: the panic line, then the last lines of the log.
    rejections: Vec<Vec<String>>,
    /// The verifier log being read, until the line that closes aya's error.
    verifier_log: Option<Vec<String>>,
}

struct StepReport {
    name: String,
    started_secs: f64,
    /// `ok` or `FAILED (exit code N)`, and when.
    result: Option<(String, f64)>,
    /// The test harness's `test result:` line.
    test_result: Option<String>,
}

/// Lines of a verifier log the summary shows: its end says what failed, with the statistics.
const VERIFIER_TAIL: usize = 6;

impl Console {
    fn read(&mut self, secs: f64, line: &str) {
        let after = |mark: &str| line.split_once(mark).map(|(_, rest)| rest.trim());
        if let Some(log) = &mut self.verifier_log {
            // aya's `LoadError { .., verifier_log: <log lines> }` ends with a line ` }`.
            if line.trim() == "}" {
                let log = self.verifier_log.take().unwrap_or_default();
                if !self.rejections.contains(&log) {
                    self.rejections.push(log);
                }
            } else {
                log.push(line.to_owned());
                if log.len() > VERIFIER_TAIL + 1 {
                    log.remove(1);
                }
            }
        } else if let Some(rest) = after(MARK_INIT) {
            self.kernel = Some(rest.to_owned());
            self.booted_secs = Some(secs);
        } else if let Some(rest) = after(MARK_STEP) {
            let (name, what) = rest.split_once(':').unwrap_or((rest, ""));
            let what = what.trim();
            if what == "start" {
                self.steps.push(StepReport {
                    name: name.to_owned(),
                    started_secs: secs,
                    result: None,
                    test_result: None,
                });
            } else if let Some(step) = self.steps.last_mut() {
                step.result = Some((what.to_owned(), secs));
            }
        } else if let Some(rest) = after(MARK_RESULT) {
            self.verdict = Some(rest.to_owned());
        } else if line.starts_with("test result:") {
            if let Some(step) = self.steps.last_mut() {
                step.test_result = Some(line.to_owned());
            }
        } else if line.contains("verifier rejected") {
            self.verifier_log = Some(vec![line.chars().take(200).collect()]);
        } else if (line.starts_with("test ") && line.ends_with("FAILED"))
            || line.contains("panicked at")
        {
            self.failures.push(line.to_owned());
        }
    }
}

/// Boots `image` with `initramfs` under qemu, mirrors the init script's output, keeps the whole
/// console in `log`, and reads the verdict.
fn boot(
    series: &'static str,
    image: &KernelImage,
    initramfs: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<Outcome> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut log_file =
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut qemu = cmd("qemu-system-x86_64");
    qemu.args(["-nographic", "-no-reboot", "-nic", "none"])
        .args(["-m", "1G", "-smp", "1"])
        .arg("-kernel")
        .arg(image.vmlinuz())
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!("$ {}", display(&qemu));
    eprintln!("vm-test: booting {} ({series}), no KVM", image.package);
    let start = Instant::now();
    let mut child = qemu.spawn().context("could not start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (lines, console_lines) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        while matches!(stdout.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = printable(&String::from_utf8_lossy(&line));
            if lines.send((start.elapsed(), text)).is_err() {
                break;
            }
            line.clear();
        }
    });

    let mut console = Console::default();
    let mut tail: Vec<String> = Vec::new();
    let exit: Option<ExitStatus> = loop {
        let left = timeout.saturating_sub(start.elapsed());
        match console_lines.recv_timeout(left) {
            Ok((at, line)) => {
                writeln!(log_file, "{line}").context("writing the console log")?;
                console.read(at.as_secs_f64(), &line);
                if console.kernel.is_some() {
                    println!("[{series}] {line}");
                }
                tail.push(line);
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                child.kill().context("stopping qemu")?;
                child.wait().context("waiting for qemu")?;
                break None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                break Some(child.wait().context("waiting for qemu")?);
            }
        }
    };
    // The reader ends at EOF, which killing qemu causes too; a panic in it lost nothing we need.
    let _ = reader.join();
    let verdict = match (console.verdict.as_deref(), exit) {
        (Some("PASS"), _) => Ok(()),
        (Some(_), _) => Err(
            match console.steps.iter().find(|step| {
                step.result
                    .as_ref()
                    .is_some_and(|(result, _)| result != "ok" && !result.starts_with(SKIPPED))
            }) {
                Some(step) if step.name == "load" => {
                    "the programs do not load (step `load` failed, `suite` skipped)".to_owned()
                }
                Some(step) => format!("step `{}` failed", step.name),
                None => "the init script reported a failure".to_owned(),
            },
        ),
        (None, None) => Err(format!(
            "timed out after {} s {}",
            timeout.as_secs(),
            if console.kernel.is_some() {
                "while the tests ran"
            } else {
                "before the init script started"
            }
        )),
        (None, Some(status)) => Err(format!("qemu exited ({status}) without a verdict")),
    };
    if verdict.is_err() && console.kernel.is_none() {
        eprintln!("vm-test: last console lines of {series}:");
        for line in &tail {
            eprintln!("  {line}");
        }
    }
    Ok(Outcome {
        series,
        package: image.package.clone(),
        verdict,
        console,
        total_secs: start.elapsed().as_secs_f64(),
        log: log.to_path_buf(),
    })
}

/// `line` without its line end, carriage returns and terminal escape sequences (the firmware
/// clears the screen before the kernel starts).
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // ESC [ parameters final-letter, or ESC and one character.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

fn print_summary(outcomes: &[Outcome], elapsed: Duration) {
    println!();
    println!("xtask vm-test summary (qemu-system-x86_64, software emulation, 1 CPU, 1 GiB):");
    for outcome in outcomes {
        let console = &outcome.console;
        let booted = console.booted_secs.map_or_else(
            || "did not boot".to_owned(),
            |s| format!("booted in {s:.1} s"),
        );
        println!(
            "  {:<5} {:<34} {}  {booted}, {:.1} s in all",
            outcome.series,
            outcome.package,
            if outcome.passed() { "PASS" } else { "FAIL" },
            outcome.total_secs
        );
        if let Some(kernel) = &console.kernel {
            println!("        {kernel}");
        }
        for step in &console.steps {
            let (result, secs) = step.result.as_ref().map_or_else(
                || ("did not finish".to_owned(), String::new()),
                |(result, at)| {
                    (
                        result.clone(),
                        format!(" in {:.1} s", at - step.started_secs),
                    )
                },
            );
            let tests = step.test_result.as_deref().unwrap_or("");
            println!("        step {}: {result}{secs}  {tests}", step.name);
        }
        if let Err(why) = &outcome.verdict {
            println!("        {why}");
            for failure in console.failures.iter().take(10) {
                println!("        {failure}");
            }
            for rejection in &console.rejections {
                for line in rejection {
                    println!("        | {line}");
                }
            }
            println!("        console log: {}", outcome.log.display());
        }
    }
    let host = capture(cmd("uname").arg("-r")).unwrap_or_default();
    println!(
        "  host  {:<34} not booted here: `cargo xtask test` runs the suite on it",
        host.trim()
    );
    println!("  {:.1} s in all", elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::{module_depends, module_load_order, module_name, printable, Cpio};

    #[test]
    fn modules_load_after_what_they_depend_on() {
        let ko = b"\x7fELF...\0license=GPL\0depends=libcrc32c,nf_conntrack\0retpoline=Y\0";
        assert_eq!(module_depends(ko), ["libcrc32c", "nf_conntrack"]);
        assert!(module_depends(b"\0depends=\0name=veth\0").is_empty());
        assert_eq!(module_name("kernel/net/sched/cls_bpf.ko.xz"), "cls_bpf");
        let depends = vec![
            ("a".to_owned(), vec!["b".to_owned(), "c".to_owned()]),
            ("b".to_owned(), vec!["c".to_owned()]),
            ("c".to_owned(), vec![]),
            ("d".to_owned(), vec![]),
        ];
        assert_eq!(module_load_order(&depends), ["c", "b", "a", "d"]);
    }

    #[test]
    fn printable_drops_escapes_and_line_ends() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2Jmptcp-vm: init: x\r\n"),
            "mptcp-vm: init: x"
        );
    }

    #[test]
    fn cpio_entries_are_aligned_and_parents_come_first() {
        let mut archive = Cpio::default();
        archive.file("a/b/c", 0o644, b"hello");
        let bytes = archive.finish();
        let text = String::from_utf8_lossy(&bytes);
        let names: Vec<usize> = ["a\0", "a/b\0", "a/b/c\0", "TRAILER!!!\0"]
            .iter()
            .map(|name| text.find(name).expect(name))
            .collect();
        assert!(names.windows(2).all(|pair| pair[0] < pair[1]), "{names:?}");
        // Each header (110 bytes) starts on a 4-byte boundary, and so does each file's data.
        for (at, _) in text.match_indices("070701") {
            assert_eq!(at % 4, 0);
        }
        assert_eq!(text.find("hello").unwrap() % 4, 0);
        assert_eq!(bytes.len() % 4, 0);
    }
}
