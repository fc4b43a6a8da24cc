//! `coffer-sim`: a **simulated** AMD secure processor, so that Coffer's attestation path runs in
//! CI without SEV-SNP hardware.
//!
//! **Owns:** a test certificate chain in AMD's shape ([`SimRoot`]: ARK → ASK → VCEK; ARK and ASK
//! RSA-4096 with RSASSA-PSS/SHA-384/MGF1-SHA-384/salt 48 signatures, VCEK ECDSA P-384 with the
//! AMD VCEK extensions), real-format version 3 attestation reports signed by that VCEK
//! ([`SimRoot::sign_report`]), and sealing keys bound to measurement and policy
//! ([`SimRoot::derive_key`], the simulated SNP `MSG_KEY_REQ`).
//!
//! **Trusts:** the operating system's RNG and the files in the directory given to
//! [`SimRoot::load_or_generate`].
//!
//! **It is not AMD and says so:** every certificate's subject carries `O=Coffer simulation (NOT
//! AMD)` and the CNs are `ARK-Sim`, `SEV-Sim` and `SEV-VCEK-Sim`. A verifier accepts this chain
//! only when its caller opted in twice: `coffer_verify::AmdRoots::with_simulation_root` *and* a
//! policy with `trust_root = "simulation"`. Nothing here protects a secret against anyone who can
//! read the key directory: that is the point of a simulator.
//!
//! **Layout:** the reports follow the SEV-SNP firmware ABI (AMD #56860) version 3 layout with a
//! **Genoa** CPUID (family 0x19, model 0x11, stepping 1), and so Genoa's TCB_VERSION layout
//! (`[0]` boot loader, `[1]` TEE, `[6]` SNP, `[7]` microcode).

#![forbid(unsafe_code)]

mod deployment;
mod error;
mod keys;
mod report;
pub mod service;

pub use deployment::sim_deployment;
pub use error::SimError;
pub use keys::{SimRoot, SimTcb, SIM_ORGANIZATION};
pub use report::{ReportFields, REPORT_SIZE, SIGNED_LEN};
pub use service::{measure_image, SimGuest, SimLaunchConfig, SimService};
