//! The simulated secure processor as a service: what the launcher runs beside each sim VM.
//!
//! A [`SimService`] is one guest's secure processor: it was told the guest's launch measurement
//! (computed by [`measure_image`] from the very artifacts QEMU boots), its HOST_DATA (what the
//! launcher chose: the deployment digest) and its guest policy, and the guest can choose nothing
//! but REPORT_DATA and the context of a sealing key. It answers the guest over a byte stream
//! (the virtio-serial port's host end) in the [`wire`] protocol, and can also be used in-process
//! as an [`EvidenceProvider`] by tests and benchmarks.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use coffer_evidence::sim::{wire, MAX_LINE};
use coffer_evidence::{Evidence, EvidenceError, EvidenceProvider, Platform, REPORT_DATA_LEN};
use coffer_measurements::snp::{CpuSignature, GuestFeatures, SevHashes, SnpLaunch, Vmm};
use zeroize::Zeroizing;

use crate::{ReportFields, SimError, SimRoot};

/// What the simulated secure processor knows about its guest from the launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimGuest {
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// HOST_DATA set at launch.
    pub host_data: [u8; 32],
    /// The guest policy.
    pub policy: u64,
}

/// A launch configuration of the simulated platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimLaunchConfig {
    /// vCPU count.
    pub vcpus: u32,
    /// vCPU type (`EPYC-Genoa`, ...), as QEMU names it.
    pub vcpu_type: String,
    /// SEV features.
    pub guest_features: u64,
}

impl Default for SimLaunchConfig {
    /// One Genoa vCPU (the simulated chip is a Genoa), SNP active only.
    fn default() -> Self {
        Self {
            vcpus: 1,
            vcpu_type: "EPYC-Genoa".into(),
            guest_features: 1,
        }
    }
}

/// The SEV-SNP launch digest of an image directory's artifacts (`firmware.fd`, `vmlinuz`,
/// `initramfs.cpio.gz`, `cmdline`) as QEMU measured direct boot would compute it.
pub fn measure_image(dir: &Path, config: &SimLaunchConfig) -> Result<[u8; 48], SimError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| SimError::Io {
            what: "reading",
            path,
            source,
        })
    };
    let (firmware, kernel, initrd) = (
        read("firmware.fd")?,
        read("vmlinuz")?,
        read("initramfs.cpio.gz")?,
    );
    let cmdline = String::from_utf8(read("cmdline")?).map_err(|_| SimError::Launch {
        reason: format!("{}/cmdline is not UTF-8", dir.display()),
    })?;
    let launch_error = |e: &dyn std::fmt::Display| SimError::Launch {
        reason: e.to_string(),
    };
    let cpu = CpuSignature::from_vcpu_type(&config.vcpu_type).map_err(|e| launch_error(&e))?;
    let digest = SnpLaunch::new(&firmware, config.vcpus, Vmm::Qemu(cpu))
        .guest_features(GuestFeatures::from_bits(config.guest_features))
        .direct_boot_hashes(SevHashes::new(&kernel, Some(&initrd), Some(&cmdline)))
        .measure()
        .map_err(|e| launch_error(&e))?;
    Ok(*digest.as_bytes())
}

/// One guest's simulated secure processor.
#[derive(Clone)]
pub struct SimService {
    root: Arc<SimRoot>,
    guest: SimGuest,
}

impl std::fmt::Debug for SimService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimService")
            .field("guest", &self.guest)
            .finish_non_exhaustive()
    }
}

impl SimService {
    /// The secure processor of a guest launched as `guest`, signing with `root`.
    pub fn new(root: Arc<SimRoot>, guest: SimGuest) -> Self {
        Self { root, guest }
    }

    /// The guest this service attests.
    pub fn guest(&self) -> &SimGuest {
        &self.guest
    }

    fn report(&self, report_data: &[u8; REPORT_DATA_LEN]) -> [u8; crate::REPORT_SIZE] {
        self.root.sign_report(&ReportFields {
            measurement: self.guest.measurement,
            host_data: self.guest.host_data,
            report_data: *report_data,
            policy: self.guest.policy,
            ..ReportFields::default()
        })
    }

    /// The answer to one request.
    pub fn answer(&self, request: &wire::Request) -> wire::Answer {
        let result = match &request.op {
            wire::Op::Report { report_data } => match hex::decode(report_data)
                .ok()
                .and_then(|b| <[u8; REPORT_DATA_LEN]>::try_from(b).ok())
            {
                Some(report_data) => wire::Outcome::Report {
                    report: hex::encode(self.report(&report_data)),
                    vek: hex::encode(self.root.vcek_der()),
                    ask: hex::encode(self.root.ask_der()),
                    ark: hex::encode(self.root.ark_der()),
                },
                None => wire::Outcome::Error(format!(
                    "report_data must be {} hex digits",
                    REPORT_DATA_LEN * 2
                )),
            },
            wire::Op::SealingKey { context } => match hex::decode(context) {
                Ok(context) => {
                    let key = self.sealing_key_for(&context);
                    wire::Outcome::SealingKey(hex::encode(key.as_ref()))
                }
                Err(e) => wire::Outcome::Error(format!("context is not hex: {e}")),
            },
        };
        wire::Answer {
            id: request.id,
            result,
        }
    }

    fn sealing_key_for(&self, context: &[u8]) -> Zeroizing<[u8; 32]> {
        self.root
            .derive_key(&self.guest.measurement, self.guest.policy, context)
    }

    /// Answers requests from `stream`, one JSON line each, until it ends. A line that is not a
    /// request gets an error answer with id 0; a line longer than [`MAX_LINE`] ends the
    /// session (the guest is misbehaving).
    pub fn serve<S: Read + Write>(&self, stream: S) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(());
            }
            if line.len() > MAX_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a request longer than {MAX_LINE} bytes"),
                ));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let answer = match serde_json::from_slice::<wire::Request>(&line) {
                Ok(request) => self.answer(&request),
                Err(e) => wire::Answer {
                    id: 0,
                    result: wire::Outcome::Error(format!("not a request: {e}")),
                },
            };
            let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
            out.push(b'\n');
            reader.get_mut().write_all(&out)?;
            reader.get_mut().flush()?;
        }
    }
}

/// In-process use (tests, benchmarks): the same reports the guest would get over the port.
impl EvidenceProvider for SimService {
    fn platform(&self) -> Platform {
        Platform::Sim
    }

    fn attest(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, EvidenceError> {
        Ok(Evidence::Snp {
            report: self.report(report_data).to_vec(),
            vek: self.root.vcek_der().to_vec(),
            ask: Some(self.root.ask_der().to_vec()),
            ark: Some(self.root.ark_der().to_vec()),
        })
    }

    fn sealing_key(&self, context: &[u8]) -> Result<Zeroizing<[u8; 32]>, EvidenceError> {
        Ok(self.sealing_key_for(context))
    }
}
