//! `run --pcap FILE`: every dropped or would-drop segment the fast path reports, as a classic
//! pcap file (LINKTYPE_ETHERNET, microsecond timestamps) that tcpdump, tshark and Wireshark
//! open. Each record holds the event's snapshot (the frame's first `snap_len` bytes, at most
//! `mptcp_common::maps::DROP_SNAP_LEN`) with the frame's original length, so readers show it as
//! captured with a short snap length.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

/// Classic pcap magic for microsecond timestamps, written in native byte order.
pub const PCAP_MAGIC_US: u32 = 0xa1b2_c3d4;
/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// The 24-byte global header.
#[must_use]
pub fn global_header(snaplen: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&PCAP_MAGIC_US.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes()); // version 2.4
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone, sigfigs: 0
    h[16..20].copy_from_slice(&snaplen.to_ne_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    h
}

/// The 16-byte header of one record.
#[must_use]
pub fn record_header(unix_ns: u64, captured: u32, original: u32) -> [u8; 16] {
    let secs = u32::try_from(unix_ns / 1_000_000_000).unwrap_or(u32::MAX);
    let micros = u32::try_from(unix_ns % 1_000_000_000 / 1_000).expect("below 10^6");
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&secs.to_ne_bytes());
    h[4..8].copy_from_slice(&micros.to_ne_bytes());
    h[8..12].copy_from_slice(&captured.to_ne_bytes());
    // A frame is never shorter than what was captured of it.
    h[12..16].copy_from_slice(&original.max(captured).to_ne_bytes());
    h
}

/// A pcap file being written.
#[derive(Debug)]
pub struct PcapWriter {
    out: BufWriter<File>,
    snaplen: u32,
}

impl PcapWriter {
    /// Creates (or truncates) `path` and writes the global header.
    ///
    /// # Errors
    /// When the file cannot be created or written.
    pub fn create(path: &Path, snaplen: u32) -> io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(&global_header(snaplen))?;
        out.flush()?;
        Ok(Self { out, snaplen })
    }

    /// Appends one frame (`data`, at most the snap length of it is kept) seen at `unix_ns` whose
    /// full length was `original_len`. Call [`PcapWriter::flush`] after a batch.
    ///
    /// # Errors
    /// When writing fails.
    pub fn write_frame(&mut self, unix_ns: u64, original_len: u32, data: &[u8]) -> io::Result<()> {
        let data = &data[..data.len().min(self.snaplen as usize)];
        let captured = u32::try_from(data.len()).expect("at most snaplen");
        self.out
            .write_all(&record_header(unix_ns, captured, original_len))?;
        self.out.write_all(data)
    }

    /// Writes what is buffered, so readers see every frame so far.
    ///
    /// # Errors
    /// When writing fails.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn headers_follow_the_classic_format() {
        let g = global_header(128);
        assert_eq!(u32_at(&g, 0), 0xa1b2_c3d4);
        assert_eq!(u16::from_ne_bytes([g[4], g[5]]), 2);
        assert_eq!(u16::from_ne_bytes([g[6], g[7]]), 4);
        assert_eq!(u32_at(&g, 16), 128);
        assert_eq!(u32_at(&g, 20), 1);
        let r = record_header(1_700_000_000_123_456_789, 82, 1500);
        assert_eq!(
            [u32_at(&r, 0), u32_at(&r, 4), u32_at(&r, 8), u32_at(&r, 12)],
            [1_700_000_000, 123_456, 82, 1500]
        );
        assert_eq!(u32_at(&record_header(0, 60, 0), 12), 60);
    }

    #[test]
    fn frames_are_written_truncated_to_the_snap_length() {
        let path = std::env::temp_dir().join(format!("mptcp-loader-{}.pcap", std::process::id()));
        let mut w = PcapWriter::create(&path, 8).unwrap();
        w.write_frame(2_000_000_000, 100, &[7u8; 20]).unwrap();
        w.write_frame(3_000_000_000, 4, &[9u8; 4]).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes.len(), 24 + 16 + 8 + 16 + 4);
        assert_eq!(u32_at(&bytes, 24), 2);
        assert_eq!((u32_at(&bytes, 32), u32_at(&bytes, 36)), (8, 100));
        assert_eq!(&bytes[40..48], &[7u8; 8]);
        assert_eq!((u32_at(&bytes, 56), u32_at(&bytes, 60)), (4, 4));
    }
}
