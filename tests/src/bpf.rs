//! The real eBPF object loaded for BPF_PROG_TEST_RUN (root only): its own maps and counters per
//! instance. Used by the prog_test_run and differential tests.

use std::collections::HashMap;

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, TestRunResult,
};
use mptcp_common::{
    counters::Counter,
    maps::{
        Config, ConnState, FlowKey, FlowRef, FrameScratch, JoinState, Token, TokenRef, MAP_CONFIG,
        MAP_CONNS, MAP_COUNTERS, MAP_FLOWS, MAP_FRAME, MAP_JOINS, MAP_TOKENS, PROG_TC_EGRESS,
        PROG_XDP_PASS_BASELINE,
    },
};
use mptcp_loader::kernel::firewall::{object_loader, xdp_ingress_program};

/// XDP_DROP.
pub const XDP_DROP: u32 = 1;
/// XDP_PASS.
pub const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC` (-1) as BPF_PROG_TEST_RUN reports it: what the egress program returns, so
/// that the programs and filters after it still run.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

/// Environment variable naming another build of the eBPF object for the BPF_PROG_TEST_RUN
/// tests (A/B builds, e.g. another BPF CPU version); unset: the object embedded in the loader.
pub const TEST_OBJECT_ENV: &str = "MPTCP_TEST_EBPF_OBJECT";

/// The object the tests load: [`TEST_OBJECT_ENV`]'s file, else the embedded one.
///
/// # Panics
/// If the file named by [`TEST_OBJECT_ENV`] cannot be read.
#[must_use]
pub fn object_under_test() -> std::borrow::Cow<'static, [u8]> {
    match std::env::var_os(TEST_OBJECT_ENV) {
        Some(path) => std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{TEST_OBJECT_ENV}={}: {e}", path.display()))
            .into(),
        None => mptcp_loader::EBPF_OBJ.into(),
    }
}

/// The bytes of the fast path's per-CPU `FrameScratch`: read as bytes because its parser part
/// (`WalkState`) has Rust layout and padding, so the struct itself is not `Pod`. Its size is
/// the same on the BPF target and the host (64-bit, same alignments); aya refuses a map whose
/// value size differs.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct FrameBytes([u8; core::mem::size_of::<FrameScratch>()]);

// SAFETY: a byte array: every bit pattern is valid and there is no padding.
unsafe impl aya::Pod for FrameBytes {}

/// A freshly loaded copy of the object.
pub struct BpfValidator {
    /// The loaded object (tests reach its maps directly).
    pub ebpf: Ebpf,
}

/// Lower-case hex of a frame, for failure messages.
pub use mptcp_loader::conn::keys::hex;

impl BpfValidator {
    /// Loads the object embedded in `mptcp-loader` and sets the global mode.
    ///
    /// # Panics
    /// If the object is missing or the verifier rejects a program.
    #[must_use]
    pub fn load(mode: u32) -> Self {
        Self::load_with_sizes(mode, &[])
    }

    /// [`Self::load`] with other map sizes (map name, max entries).
    ///
    /// # Panics
    /// As [`Self::load`].
    #[must_use]
    pub fn load_with_sizes(mode: u32, sizes: &[(&str, u32)]) -> Self {
        let object = object_under_test();
        assert!(
            !object.is_empty(),
            "the eBPF object was not built (run `cargo xtask setup`)"
        );
        let mut loader = object_loader();
        for (name, entries) in sizes {
            loader.map_max_entries(name, *entries);
        }
        let mut ebpf = loader.load(&object).expect("load object");
        for name in [xdp_ingress_program(), PROG_XDP_PASS_BASELINE] {
            let prog: &mut Xdp = ebpf.program_mut(name).expect(name).try_into().expect("xdp");
            prog.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        let tc: &mut SchedClassifier = ebpf
            .program_mut(PROG_TC_EGRESS)
            .expect("tc")
            .try_into()
            .expect("classifier");
        tc.load()
            .unwrap_or_else(|e| panic!("verifier rejected {PROG_TC_EGRESS}: {e:?}"));
        let mut v = BpfValidator { ebpf };
        v.set_config(Config {
            mode,
            ..Config::default()
        });
        v
    }

    /// Replaces the global configuration.
    ///
    /// # Panics
    /// If the map cannot be written.
    pub fn set_config(&mut self, config: Config) {
        let mut map: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut(MAP_CONFIG).expect("config map")).expect("array");
        map.set(0, config, 0).expect("set config");
    }

    /// Runs the XDP program on `frame`; returns its action.
    ///
    /// # Panics
    /// If BPF_PROG_TEST_RUN fails.
    pub fn run(&self, frame: &[u8]) -> u32 {
        self.test_run::<Xdp>(xdp_ingress_program(), frame)
    }

    /// Runs the tc egress program on `frame`; returns its action.
    ///
    /// # Panics
    /// If BPF_PROG_TEST_RUN fails.
    pub fn run_egress(&self, frame: &[u8]) -> u32 {
        self.test_run::<SchedClassifier>(PROG_TC_EGRESS, frame)
    }

    /// Runs the program `name` (of type `P`) once on `frame`; returns its action.
    fn test_run<P>(&self, name: &str, frame: &[u8]) -> u32
    where
        P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
        for<'p> &'p P: TryFrom<&'p Program>,
    {
        let Ok(prog) = <&P>::try_from(self.ebpf.program(name).unwrap()) else {
            panic!("{name} is not of the expected program type");
        };
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        prog.test_run(opts)
            .unwrap_or_else(|e| panic!("test_run of {name} on {}: {e:?}", hex(frame)))
            .return_value
    }

    /// The reason the last frame run on CPU `cpu` was counted under (the fast path leaves it
    /// first in its per-CPU `FrameScratch`).
    ///
    /// # Panics
    /// If the map cannot be read.
    #[must_use]
    pub fn last_reason(&self, cpu: usize) -> Counter {
        let frames: PerCpuArray<&MapData, FrameBytes> =
            PerCpuArray::try_from(self.ebpf.map(MAP_FRAME).unwrap()).unwrap();
        let values = frames.get(&0, 0).unwrap();
        let reason = u32::from_ne_bytes(values[cpu].0[..4].try_into().unwrap());
        Counter::ALL[reason as usize]
    }

    /// Every counter summed over CPUs.
    ///
    /// # Panics
    /// If the map cannot be read.
    #[must_use]
    pub fn counters(&self) -> HashMap<&'static str, u64> {
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(MAP_COUNTERS).unwrap()).unwrap();
        Counter::ALL
            .iter()
            .map(|c| {
                (
                    c.name(),
                    counters.get(&(*c as u32), 0).unwrap().iter().sum(),
                )
            })
            .collect()
    }

    /// Number of entries of one of the state maps.
    ///
    /// # Panics
    /// If the map cannot be read or is not one of them.
    #[must_use]
    pub fn entries(&self, name: &str) -> usize {
        fn count<K: aya::Pod, V: aya::Pod>(map: &aya::maps::Map) -> usize {
            BpfHashMap::<&MapData, K, V>::try_from(map)
                .unwrap()
                .keys()
                .count()
        }
        let map = self.ebpf.map(name).unwrap();
        match name {
            MAP_CONNS => count::<u64, ConnState>(map),
            MAP_FLOWS => count::<FlowKey, FlowRef>(map),
            MAP_TOKENS => count::<Token, TokenRef>(map),
            MAP_JOINS => count::<FlowKey, JoinState>(map),
            _ => panic!("{name} is not a state map"),
        }
    }

    /// The tracked connections.
    ///
    /// # Panics
    /// If the map cannot be read.
    #[must_use]
    pub fn conns(&self) -> Vec<ConnState> {
        let conns: BpfHashMap<&MapData, u64, ConnState> =
            BpfHashMap::try_from(self.ebpf.map(MAP_CONNS).unwrap()).unwrap();
        conns.iter().map(|r| r.unwrap().1).collect()
    }

    /// The tracked subflows.
    ///
    /// # Panics
    /// If the map cannot be read.
    #[must_use]
    pub fn flows(&self) -> Vec<(FlowKey, FlowRef)> {
        let flows: BpfHashMap<&MapData, FlowKey, FlowRef> =
            BpfHashMap::try_from(self.ebpf.map(MAP_FLOWS).unwrap()).unwrap();
        flows.iter().map(|r| r.unwrap()).collect()
    }

    /// The token map: token -> (connection id, role).
    ///
    /// # Panics
    /// If the map cannot be read.
    #[must_use]
    pub fn tokens(&self) -> HashMap<Token, (u64, u8)> {
        let tokens: BpfHashMap<&MapData, Token, TokenRef> =
            BpfHashMap::try_from(self.ebpf.map(MAP_TOKENS).unwrap()).unwrap();
        tokens
            .iter()
            .map(|r| {
                let (token, t) = r.unwrap();
                (token, (u64::from_ne_bytes(t.conn_id), t.role))
            })
            .collect()
    }

    /// Writes one token entry, as if a tracked connection held `token`.
    ///
    /// # Panics
    /// If the map cannot be written.
    pub fn insert_token(&mut self, token: Token, conn_id: u64, role: u8) {
        let mut tokens: BpfHashMap<&mut MapData, Token, TokenRef> =
            BpfHashMap::try_from(self.ebpf.map_mut(MAP_TOKENS).unwrap()).unwrap();
        let value = TokenRef {
            conn_id: conn_id.to_ne_bytes(),
            role,
        };
        tokens.insert(token, value, 0).unwrap();
    }

    /// Writes the midstates the way the loader does, for every learned connection.
    ///
    /// # Panics
    /// If the map cannot be read or written.
    pub fn install_midstates(&mut self) {
        let mut conns: BpfHashMap<&mut MapData, u64, ConnState> =
            BpfHashMap::try_from(self.ebpf.map_mut(MAP_CONNS).unwrap()).unwrap();
        let all: Vec<(u64, ConnState)> = conns.iter().map(|r| r.unwrap()).collect();
        for (id, state) in all {
            let material = mptcp_loader::conn::keys::derive(&state.key_a, &state.key_b);
            conns
                .insert(
                    id,
                    mptcp_loader::conn::keys::with_midstates(&state, &material),
                    0,
                )
                .unwrap();
        }
    }
}

/// Pins the calling thread to `cpu`, so BPF_PROG_TEST_RUN runs there and per-CPU values can be
/// read for it.
///
/// # Panics
/// If the kernel refuses.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "sched_setaffinity"
        );
    }
}
