//! `coffer-verify`: AMD SEV-SNP attestation report verification.
//!
//! **Owns:** parsing SNP attestation reports (versions 2, 3 and 5, from raw offsets, masked chip
//! IDs included), AMD certificate chains (ARK → ASK → VCEK and ARK → ASVK → VLEK for Milan,
//! Genoa and Turin), and a fail-closed policy over the report's fields.
//!
//! **Trusts:** only the AMD root certificates compiled into the crate (`roots/`, see
//! [`roots`]), the SHA-384/ECDSA/RSA implementations of RustCrypto, and the clock value the caller
//! passes. Everything that arrives with the evidence, including an ASK or ARK, is checked.
//!
//! **Checks** (each a named [`CheckResult`] in the [`Verdict`], all run, none short-circuits):
//! the chain's signatures and names (`chain.*.signature`), the pinned ARK (`chain.ark.pinned`),
//! the kind of root against the policy's `trust_root` (`chain.trust_root`: AMD by default; the
//! Coffer simulation root only when opted into twice, see [`AmdRoots::with_simulation_root`]),
//! every certificate's dates (`chain.*.validity`), the report's signature over the exact bytes
//! 0x000..0x2A0 (`report.signature`), SIGNATURE_ALGO, MASK_CHIP_KEY, SIGNING_KEY against the kind
//! of certificate, reserved fields, the CPUID against the VEK's generation (`report.*`), the
//! VCEK's chip ID and the VEK's TCB against the report (`vek.*`), and with a [`Policy`]:
//! measurement, TCB floors per component, debug, migration agent, SMT, VMPL, report version,
//! processor, and the optional CPUID, chip ID, HOST_DATA, REPORT_DATA, ID/author key, guest SVN
//! (`policy.*`).
//!
//! **No I/O:** callers pass bytes and a [`Timestamp`]; the crate never reads files, the network
//! or the clock (except [`Timestamp::now`], when asked).
//!
//! ```no_run
//! use coffer_verify::{verify, AmdRoots, Evidence, Policy, Timestamp};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (report, vcek, policy_toml) = (vec![], vec![], String::new());
//! let evidence = Evidence::parse(&report, &vcek, None, None)?;
//! let policy = Policy::from_toml(&policy_toml)?;
//! let verdict = verify(&evidence, &AmdRoots::builtin()?, &policy, Timestamp::now()?);
//! print!("{}", coffer_verify::explain::render_text(&verdict, None));
//! if verdict.accepted() { /* release the secret */ }
//! # Ok(()) }
//! ```
//!
//! Layout, one concern per file: [`report`] (parser), [`certs`] (X.509 and AMD extensions),
//! [`chain`], [`tcb`] (generations and TCB layouts), [`policy`] (the policy file),
//! `checks/` (authenticity and policy checks, [`results`](checks::results)), [`roots`],
//! [`time`], [`error`], [`explain`] (text for people, apart from the decision).

#![forbid(unsafe_code)]

pub mod advise;
pub mod cache;
pub mod certs;
pub mod chain;
pub mod checks;
pub mod error;
pub mod explain;
pub mod policy;
pub mod report;
pub mod roots;
pub mod tcb;
pub mod time;
mod verify;

pub use cache::SignatureCache;
pub use certs::{Certificate, VekExtensions};
pub use chain::VekKind;
pub use checks::results::{
    CertRole, CheckId, CheckResult, MeasurementMismatch, Scope, TcbKind, Verdict,
};
pub use error::{CertError, EvidenceError, ExtensionError, PolicyError, ReportError, TimeError};
pub use policy::{Policy, TrustRoot};
pub use report::Report;
pub use roots::AmdRoots;
pub use tcb::{Generation, Tcb, TcbComponent};
pub use time::Timestamp;
pub use verify::{verify, verify_authenticity_only, verify_with_cache, Evidence};
