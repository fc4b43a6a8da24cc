//! Launch-measurement calculators: what a confidential VM's hardware root of trust will report
//! for a given set of boot inputs, computed ahead of time so a verifier can pin it.
//!
//! [`snp`] computes the AMD SEV-SNP launch digest (the attestation report's MEASUREMENT) for
//! QEMU measured direct boot: OVMF firmware, kernel, initrd and command line bound through the
//! SEV hashes table, one VMSA page per vCPU.
//!
//! **What it owns:** the byte-exact digest algorithm. **What it trusts:** nothing; it is pure.
//! Bytes go in and a digest comes out: no files, no clock, no environment, so the same code runs
//! in a CLI, a verifier service or a test table. **What it checks:** that the firmware is a
//! well-formed OVMF image with SEV metadata (parsing is bounds-checked and never panics), and
//! that the inputs are launchable as QEMU would launch them; anything else is a typed error.
//!
//! **Reference:** `sev-snp-measure` 0.0.13 (PyPI, virtee), whose output this crate reproduces
//! exactly for every launch QEMU accepts. Where the reference would produce a digest for a launch
//! QEMU refuses (firmware without SEV metadata, zero vCPUs) or where QEMU and the reference read
//! the same bytes differently (a GUID listed twice in the footer table, an unknown metadata
//! section type) this crate returns an error instead of a digest that no real guest can have.
//!
//! **Why not the `sev` crate's `measurement` module:** since April 2026 the reference puts
//! RDX = 0x600 in EC2 VMSAs, and `sev` 8.0.0 still puts 0, so its EC2 digests disagree with
//! the reference; it has no GCE type; it pulls a heavy dependency tree (RSA, P-384, X.509,
//! ioctl bindings) into every user of a ~600-line hash computation; and its API opens files by
//! path, where we want a bytes-in, digest-out calculator with no I/O.

#![forbid(unsafe_code)]

pub mod snp;
