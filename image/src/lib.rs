//! The image builder.
//!
//! From a per-role image spec (`image/specs/<role>.toml`) and the pinned inputs of
//! `image/inputs.lock`, it builds an appliance image: `vmlinuz`, `initramfs.cpio.gz`, `cmdline`,
//! the firmware the image is measured with, `measurements.json` (the SEV-SNP launch digest of
//! every launch configuration the spec lists) and `manifest.json` naming every input and output
//! with its sha256.
//!
//! Reproducibility is the point: the same checkout gives the same bytes on any machine and in any
//! directory. Inputs are pinned by sha256 (a mismatch stops the build); the appliance binary is
//! built `--locked` with machine paths remapped; the initramfs is a sorted `newc` cpio with fixed
//! owners, modes and times ([`cpio`]) under gzip with a fixed header.
//!
//! What it trusts: the checkout and the toolchain. What it checks: every pinned input.

#![forbid(unsafe_code)]

mod build;
pub mod cpio;
mod error;
pub mod lock;
pub mod measure;
pub mod modules;
pub mod pins;
mod progress;
pub mod spec;

pub use build::{
    build_appliance_binary, build_image, files, find_checkout, BuildRequest, APPLIANCE_TARGET,
};
pub use error::ImageError;
pub use progress::Progress;
pub use spec::ImageSpec;
