//! `run --pcap FILE`: every dropped or would-drop segment the fast path reports, as a classic
//! pcap file (LINKTYPE_ETHERNET, microsecond timestamps) that tcpdump, tshark and Wireshark
//! open, written with the `pcap-file` crate. Each record holds the event's snapshot (the frame's
//! first `snap_len` bytes, at most `mptcp_common::maps::DROP_SNAP_LEN`) with the frame's
//! original length, so readers show it as captured with a short snap length.

use std::{fs::File, io, path::Path, time::Duration};

use pcap_file::{
    pcap::{PcapHeader, PcapPacket},
    DataLink, Endianness, PcapError, TsResolution,
};

/// A pcap file being written. Records go to the file as they come (unbuffered: drop events are
/// rate-limited, and a reader such as `tcpdump -r` sees every frame so far).
pub struct PcapWriter {
    out: pcap_file::pcap::PcapWriter<File>,
    snaplen: u32,
}

impl std::fmt::Debug for PcapWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapWriter")
            .field("snaplen", &self.snaplen)
            .finish_non_exhaustive()
    }
}

/// `pcap-file`'s error as the `io::Error` the callers report.
fn io_error(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl PcapWriter {
    /// Creates (or truncates) `path` and writes the global header (native byte order, version
    /// 2.4, microseconds, Ethernet).
    ///
    /// # Errors
    /// When the file cannot be created or written.
    pub fn create(path: &Path, snaplen: u32) -> io::Result<Self> {
        let header = PcapHeader {
            snaplen,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let out = pcap_file::pcap::PcapWriter::with_header(File::create(path)?, header)
            .map_err(io_error)?;
        Ok(Self { out, snaplen })
    }

    /// Appends one frame (`data`, at most the snap length of it is kept) seen at `unix_ns` whose
    /// full length was `original_len`.
    ///
    /// # Errors
    /// When writing fails.
    pub fn write_frame(&mut self, unix_ns: u64, original_len: u32, data: &[u8]) -> io::Result<()> {
        let data = &data[..data.len().min(self.snaplen as usize)];
        let captured = u32::try_from(data.len()).expect("at most snaplen");
        // The classic format has 32-bit seconds.
        let timestamp = Duration::from_nanos(unix_ns).min(Duration::from_secs(u32::MAX.into()));
        // A frame is never shorter than what was captured of it.
        let packet = PcapPacket::new(timestamp, original_len.max(captured), data);
        self.out.write_packet(&packet).map(drop).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn frames_follow_the_classic_format_truncated_to_the_snap_length() {
        let path = std::env::temp_dir().join(format!("mptcp-loader-{}.pcap", std::process::id()));
        let mut w = PcapWriter::create(&path, 8).unwrap();
        w.write_frame(1_700_000_000_123_456_789, 100, &[7u8; 20])
            .unwrap();
        w.write_frame(3_000_000_000, 0, &[9u8; 4]).unwrap();
        drop(w);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // Global header: magic (µs), version 2.4, snap length, LINKTYPE_ETHERNET.
        assert_eq!(u32_at(&bytes, 0), 0xa1b2_c3d4);
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 2);
        assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), 4);
        assert_eq!(u32_at(&bytes, 16), 8);
        assert_eq!(u32_at(&bytes, 20), 1);
        assert_eq!(bytes.len(), 24 + 16 + 8 + 16 + 4);
        // Seconds, microseconds, captured and original length.
        assert_eq!(
            [24, 28, 32, 36].map(|at| u32_at(&bytes, at)),
            [1_700_000_000, 123_456, 8, 100]
        );
        assert_eq!(&bytes[40..48], &[7u8; 8]);
        // An original length below the captured one is raised to it.
        assert_eq!([48, 52, 56, 60].map(|at| u32_at(&bytes, at)), [3, 0, 4, 4]);
    }
}
