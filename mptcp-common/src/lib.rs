//! Types, constants and pure logic shared by the MPTCP validator's eBPF programs and its loader.
//! `no_std`; compiled into the eBPF object and tested on the host.
#![no_std]

pub mod counters;
pub mod hex;
pub mod hmac;
pub mod maps;
pub mod packet;
pub mod sha256;
pub mod validate;

#[cfg(any(test, feature = "testing"))]
extern crate std;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(any(test, feature = "testing"))]
pub mod model;

#[cfg(test)]
mod packet_tests;
