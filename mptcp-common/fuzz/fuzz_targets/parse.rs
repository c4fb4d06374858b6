//! Arbitrary bytes as a frame: `parse_tcp`, the option walk, and every option reader, with the
//! invariants of `mptcp_common_fuzz::check_frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let _ = mptcp_common_fuzz::check_frame(frame);
});
