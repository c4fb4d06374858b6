//! Lower-case hex of bytes, as tokens and keys appear on the wire (`tcpdump`, Wireshark):
//! `format!("{}", Hex(&token))`. A `Display` wrapper, so it needs no allocator.

use core::fmt;

/// Formats its bytes as lower-case hex, two digits each.
#[derive(Clone, Copy, Debug)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::Hex;
    use std::string::ToString as _;

    #[test]
    fn two_lower_case_digits_a_byte() {
        assert_eq!(Hex(&[0x32, 0x2a, 0x07, 0xf3]).to_string(), "322a07f3");
        assert_eq!(Hex(&[]).to_string(), "");
    }
}
