//! Structure-aware: a well-formed Ethernet / [VLAN] / IPv4 or IPv6 / TCP frame built around
//! fuzzer-chosen TCP option bytes, flags, VLAN tags, IPv4 options and IPv6 extension headers
//! (layout in `mptcp_common_fuzz::options_input`), so the fuzzer spends its time in the option
//! walk. Besides the invariants of `check_frame`, `parse_tcp` must return exactly what the
//! layout says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mptcp_common_fuzz::{check_frame, options_input::OptionsInput};

fuzz_target!(|data: &[u8]| {
    let input = OptionsInput::decode(data);
    let frame = input.bytes();
    let parsed = check_frame(&frame);
    match input.expected() {
        Some(expected) => assert_eq!(parsed, expected, "parse_tcp on {input:?}"),
        None => assert!(
            parsed.is_err(),
            "a frame cut into its headers parsed: {input:?}"
        ),
    }
    if let Ok(seg) = parsed {
        assert_eq!(
            frame[seg.opts_start..seg.opts_end],
            input.padded_options()[..],
            "the options found are not the options written"
        );
    }
});
