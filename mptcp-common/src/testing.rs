//! Test support shared by the host tests, the BPF_PROG_TEST_RUN tests and the lab's forgers
//! (feature `testing`): a frame builder that writes raw TCP options, and a reader for the fixture
//! captures.

use crate::packet::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, TCPOPT_NOP, TCP_ACK};
use std::string::String;
use std::vec::Vec;

/// Builds Ethernet / [VLAN] / IPv4 or IPv6 / TCP frames with raw option bytes.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Ethernet destination and source.
    pub macs: ([u8; 6], [u8; 6]),
    /// VLAN tags, outermost first (written as 802.1Q).
    pub vlans: Vec<u16>,
    /// IPv6 instead of IPv4.
    pub v6: bool,
    /// Source and destination address (IPv4 uses the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source and destination TCP ports.
    pub ports: (u16, u16),
    /// IPv4 options (padded by the caller to a multiple of 4).
    pub ip_opts: Vec<u8>,
    /// IPv6 extension headers: (next-header value naming this header, body after the 2-byte head).
    pub v6_ext: Vec<(u8, Vec<u8>)>,
    /// TCP options; NOP-padded to a multiple of 4.
    pub tcp_opts: Vec<u8>,
    /// TCP flags.
    pub flags: u8,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgement number.
    pub ack: u32,
    /// TCP window.
    pub window: u16,
    /// TCP payload.
    pub payload: Vec<u8>,
}

fn addr4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

impl Frame {
    /// IPv4 198.18.0.1:40000 -> 198.18.0.2:10000, ACK, with these options.
    #[must_use]
    pub fn v4(opts: &[u8]) -> Self {
        Frame {
            macs: ([0; 6], [0; 6]),
            vlans: Vec::new(),
            v6: false,
            src: addr4([198, 18, 0, 1]),
            dst: addr4([198, 18, 0, 2]),
            ports: (40000, 10000),
            ip_opts: Vec::new(),
            v6_ext: Vec::new(),
            tcp_opts: opts.to_vec(),
            flags: TCP_ACK,
            seq: 1,
            ack: 1,
            window: 0xffff,
            payload: Vec::new(),
        }
    }

    /// IPv6 [2001:db8::1]:40000 -> [2001:db8::2]:10000, ACK, with these options.
    #[must_use]
    pub fn v6(opts: &[u8]) -> Self {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let mut dst = src;
        src[15] = 1;
        dst[15] = 2;
        Frame {
            v6: true,
            src,
            dst,
            ..Frame::v4(opts)
        }
    }

    /// The same frame in the other direction.
    #[must_use]
    pub fn reversed(&self, opts: &[u8]) -> Self {
        Frame {
            src: self.dst,
            dst: self.src,
            ports: (self.ports.1, self.ports.0),
            tcp_opts: opts.to_vec(),
            ..self.clone()
        }
    }

    /// With other TCP options.
    #[must_use]
    pub fn with_opts(&self, opts: &[u8]) -> Self {
        Frame {
            tcp_opts: opts.to_vec(),
            ..self.clone()
        }
    }

    /// The frame's bytes (checksums are left zero: the XDP program does not read them).
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&self.macs.0);
        f.extend_from_slice(&self.macs.1);
        for tag in &self.vlans {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&self.ports.0.to_be_bytes());
        tcp.extend_from_slice(&self.ports.1.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        let mut opts = self.tcp_opts.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(TCPOPT_NOP);
        }
        let doff = u8::try_from((20 + opts.len()) / 4).expect("TCP options too long");
        tcp.push(doff << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&self.window.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&opts);
        tcp.extend_from_slice(&self.payload);
        if self.v6 {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            let first = self.v6_ext.first().map_or(IPPROTO_TCP, |e| e.0);
            let mut ext = Vec::new();
            for (i, (_, body)) in self.v6_ext.iter().enumerate() {
                let next = self.v6_ext.get(i + 1).map_or(IPPROTO_TCP, |e| e.0);
                ext.push(next);
                ext.push(u8::try_from((body.len() + 2) / 8 - 1).expect("extension too long"));
                ext.extend_from_slice(body);
            }
            let plen = u16::try_from(ext.len() + tcp.len()).expect("frame too long");
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&plen.to_be_bytes());
            f.extend_from_slice(&[first, 64]);
            f.extend_from_slice(&self.src);
            f.extend_from_slice(&self.dst);
            f.extend_from_slice(&ext);
        } else {
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let ihl = (20 + self.ip_opts.len()) / 4;
            let total = u16::try_from(ihl * 4 + tcp.len()).expect("frame too long");
            f.push(0x40 | u8::try_from(ihl).expect("IP options too long"));
            f.push(0);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
            f.extend_from_slice(&self.src[..4]);
            f.extend_from_slice(&self.dst[..4]);
            f.extend_from_slice(&self.ip_opts);
        }
        f.extend_from_slice(&tcp);
        f
    }

    /// Where the IP header and the TCP header start in [`Frame::bytes`].
    fn l3_l4_offsets(&self) -> (usize, usize) {
        let l3 = 14 + 4 * self.vlans.len();
        let l4 = if self.v6 {
            l3 + 40 + self.v6_ext.iter().map(|(_, b)| b.len() + 2).sum::<usize>()
        } else {
            l3 + 20 + self.ip_opts.len()
        };
        (l3, l4)
    }

    /// The frame's bytes with the IPv4 header checksum and the TCP checksum filled in: what a
    /// receiving Linux stack accepts.
    #[must_use]
    pub fn wire_bytes(&self) -> Vec<u8> {
        let mut f = self.bytes();
        let (l3, l4) = self.l3_l4_offsets();
        let tcp_len = u32::try_from(f.len() - l4).expect("frame too long");
        let mut pseudo = Vec::with_capacity(40);
        if self.v6 {
            pseudo.extend_from_slice(&f[l3 + 8..l3 + 40]);
            pseudo.extend_from_slice(&tcp_len.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_TCP]);
        } else {
            let ip_sum = internet_checksum(&[&f[l3..l4]]);
            f[l3 + 10..l3 + 12].copy_from_slice(&ip_sum.to_be_bytes());
            pseudo.extend_from_slice(&f[l3 + 12..l3 + 20]);
            pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
            let len16 = u16::try_from(tcp_len).expect("IPv4 segment too long");
            pseudo.extend_from_slice(&len16.to_be_bytes());
        }
        let tcp_sum = internet_checksum(&[&pseudo, &f[l4..]]);
        f[l4 + 16..l4 + 18].copy_from_slice(&tcp_sum.to_be_bytes());
        f
    }

    /// The TCP segment of [`Frame::wire_bytes`] alone (header, options, payload; checksum over
    /// the IP pseudo-header): what a raw IP socket sends, the kernel adding the IP header.
    #[must_use]
    pub fn tcp_segment(&self) -> Vec<u8> {
        let (_, l4) = self.l3_l4_offsets();
        self.wire_bytes().split_off(l4)
    }
}

/// RFC 1071 Internet checksum over the concatenation of `parts` (each of even length but the
/// last).
#[must_use]
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match odd.take() {
                Some(high) => sum += u64::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u64::from(u16::from_be_bytes([high, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

/// Key-A of the protocol doc's synthetic vectors (docs/protocol.md §7.3): the keys of the
/// test frames, the benchmark and the traffic profiles' example connection.
pub const KEY_A: [u8; 8] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
/// Key-B of the protocol doc's synthetic vectors (§7.3).
pub const KEY_B: [u8; 8] = [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18];

/// Overrides the directory of the captures (`tests/fixtures/` of the repository by default).
pub const FIXTURES_ENV: &str = "MPTCP_FIXTURES_DIR";

/// Path of a capture: in `$MPTCP_FIXTURES_DIR` when that is set (the VM tests of
/// `cargo xtask vm-test` run where the build tree does not exist, and a fresh recording of
/// `cargo xtask record-fixtures` can be tried this way), else in the repository's
/// `tests/fixtures/`.
#[must_use]
pub fn fixture(name: &str) -> String {
    match std::env::var(FIXTURES_ENV) {
        Ok(dir) if !dir.is_empty() => std::format!("{dir}/{name}"),
        _ => checked_in_fixture(name),
    }
}

/// The path of a fixture checked into the repository (`tests/fixtures/`), whatever
/// `$MPTCP_FIXTURES_DIR` says: for tests of values documented for those very files. Where the
/// build tree does not exist (`cargo xtask vm-test` copies only the test binaries and the
/// checked-in fixtures into the VM), the fixture directory is the copy.
#[must_use]
pub fn checked_in_fixture(name: &str) -> String {
    let in_tree = std::format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::path::Path::new(&in_tree).exists() {
        in_tree
    } else {
        fixture(name)
    }
}

/// The names of the `*.pcap` files in the fixture directory (see [`fixture`]), sorted.
///
/// # Panics
/// If the directory cannot be read.
#[must_use]
pub fn fixture_captures() -> Vec<String> {
    let dir = fixture("");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| {
            std::path::Path::new(name)
                .extension()
                .is_some_and(|e| e == "pcap")
        })
        .collect();
    names.sort();
    names
}

/// What a capture holds, read by tshark (Wireshark's MPTCP dissector, not this project's
/// parser) into `<capture stem>.expected` beside it by `cargo xtask record-fixtures`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// Frames with an ADD_ADDR that carries an HMAC (E = 0).
    pub add_addr_hmac: usize,
    /// Frames with an ADD_ADDR echo (E = 1).
    pub add_addr_echo: usize,
    /// MP_JOIN SYNs (SYN without ACK).
    pub mp_join_syn: usize,
    /// Every MPTCP connection's keys as its MP_CAPABLE third ACK carries them: (sender's key,
    /// receiver's key), that is (key A of the client, key B of the server), in order of appearance.
    pub connections: Vec<([u8; 8], [u8; 8])>,
}

impl Expected {
    /// Parses the `.expected` text: `#` comments, then `name value` lines
    /// (`connection <key A hex> <key B hex>` once per connection).
    ///
    /// # Errors
    /// On an unknown name or a malformed value, with the line.
    pub fn parse(text: &str) -> Result<Expected, String> {
        let key = |hex: &str| -> Option<[u8; 8]> {
            let value = u64::from_str_radix(hex, 16).ok()?;
            (hex.len() == 16).then(|| value.to_be_bytes())
        };
        let mut expected = Expected::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || std::format!("bad line in the expected values: {line:?}");
            let words: Vec<&str> = line.split_whitespace().collect();
            let count = |field: &mut usize| -> Result<(), String> {
                match words.as_slice() {
                    [_, n] => n.parse().map(|n| *field = n).map_err(|_| bad()),
                    _ => Err(bad()),
                }
            };
            match words[0] {
                "add_addr_hmac" => count(&mut expected.add_addr_hmac)?,
                "add_addr_echo" => count(&mut expected.add_addr_echo)?,
                "mp_join_syn" => count(&mut expected.mp_join_syn)?,
                "connection" => match words.as_slice() {
                    [_, a, b] => expected
                        .connections
                        .push((key(a).ok_or_else(bad)?, key(b).ok_or_else(bad)?)),
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            }
        }
        Ok(expected)
    }
}

/// The expected values of a capture (`foo.pcap` -> `foo.expected` in the same directory, see
/// [`fixture`]).
///
/// # Panics
/// If the file cannot be read or parsed.
#[must_use]
pub fn fixture_expected(capture: &str) -> Expected {
    let stem = capture.strip_suffix(".pcap").unwrap_or(capture);
    let path = fixture(&std::format!("{stem}.expected"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Expected::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Set to `1` to make every test that cannot reach the kernel fail instead of skipping.
pub const REQUIRE_ENV: &str = "MPTCP_TESTS_REQUIRE_BPF";

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// Whether a test that cannot run here must fail instead of skipping: in CI (`CI` set to
/// anything but empty, `0` or `false`), or when `MPTCP_TESTS_REQUIRE_BPF` is set so. The one
/// skip policy of every root-only test, in the `tests` crate and in the loader's own tests.
#[must_use]
pub fn skips_are_failures() -> bool {
    env_flag("CI") || env_flag(REQUIRE_ENV)
}

/// The skip-or-fail gate of every root-only test: `true` when there are no `problems` (run the
/// test). Otherwise prints `SKIP <test>: ...` and returns `false`, or panics when
/// [`skips_are_failures`].
///
/// # Panics
/// When there are problems and skips are failures.
#[must_use]
pub fn gate(test: &str, problems: &[String]) -> bool {
    if problems.is_empty() {
        return true;
    }
    let reasons = problems.join("; ");
    assert!(
        !skips_are_failures(),
        "{test}: cannot run here, and in CI or with {REQUIRE_ENV}=1 that is a failure: {reasons}"
    );
    std::eprintln!("SKIP {test}: {reasons} (in CI, or with {REQUIRE_ENV}=1, this fails)");
    false
}

/// Frames of a classic little-endian microsecond pcap with Ethernet link type.
///
/// # Panics
/// If the file cannot be read or is not such a pcap.
#[must_use]
pub fn pcap_frames(path: &str) -> Vec<Vec<u8>> {
    use pcap_file::{pcap::PcapReader, DataLink, Endianness, TsResolution};
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut reader = PcapReader::new(&data[..]).unwrap_or_else(|e| panic!("{path}: {e}"));
    let header = reader.header();
    assert_eq!(
        (header.endianness, header.ts_resolution),
        (Endianness::Little, TsResolution::MicroSecond),
        "{path}: not a little-endian microsecond pcap"
    );
    assert_eq!(header.datalink, DataLink::ETHERNET, "{path}: not Ethernet");
    let mut frames = Vec::new();
    // Raw records: pcap-file's checked ones refuse a frame longer than the snap length.
    while let Some(packet) = reader.next_raw_packet() {
        let packet = packet.unwrap_or_else(|e| panic!("{path}: record {}: {e}", frames.len()));
        frames.push(packet.data.into_owned());
    }
    frames
}
