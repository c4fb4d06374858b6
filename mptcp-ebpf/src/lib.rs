#![no_std]
// Empty: the programs live in main.rs; this stub lets `cargo check --workspace` work on the host.
