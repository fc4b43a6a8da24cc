//! `coffer verify report`: check an SEV-SNP attestation report offline.
//!
//! Thin glue: read the files, pick the clock, hand the bytes to `coffer-verify`, print. Exit
//! codes: 0 accepted, 1 rejected (at least one check failed), 2 unusable input (a file that
//! cannot be read or parsed, a bad policy, an ambiguous certificate directory).
//!
//! Without `--policy` only authenticity is checked (AMD chain, dates, signature, chip ID and TCB
//! against the certificate) and the report's fields are printed: that says the evidence is
//! genuine, not that the VM runs what it should.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{ArgGroup, Args};
use coffer_types::{MeasurementSet, PinFile};
use coffer_verify::advise::{ImageArtifacts, LaunchCandidates};
use coffer_verify::explain::{render_report, render_text, MeasurementAdvisor, ReportSummary};
use coffer_verify::{
    verify, verify_authenticity_only, AmdRoots, Certificate, Evidence, Policy, Report, Timestamp,
};

/// `coffer verify report --report R (--vcek F | --certs DIR) [--policy P] [--at TIME] [--json]`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("vek_source").required(true).args(["vcek", "certs"])))]
pub struct VerifyReportArgs {
    /// The attestation report: 1184 raw bytes (or the same as hex text).
    #[arg(long, value_name = "FILE")]
    pub report: PathBuf,
    /// The VCEK (or VLEK) that signed the report, PEM or DER; the built-in AMD roots complete
    /// the chain.
    #[arg(long, value_name = "FILE")]
    pub vcek: Option<PathBuf>,
    /// A directory with the VEK (vcek.der, vcek.pem, vlek.der or vlek.pem) and optionally the
    /// ASK/ASVK (ask.*, asvk.*) and ARK (ark.*), or both as cert_chain.pem (ASK then ARK). A
    /// given ARK must equal the built-in one; a given ASK must chain to it.
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Policy file (TOML) the report must satisfy; without it only authenticity is checked.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Check certificate dates at this time (RFC 3339, e.g. 2025-06-01T00:00:00Z) instead of now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<Timestamp>,
    /// Pin file(s) (measurements/pins/<role>.json): their launch digests are added to the
    /// policy's allowed measurements, and a mismatch is explained against them.
    #[arg(long = "pins", value_name = "FILE", requires = "policy")]
    pub pins: Vec<PathBuf>,
    /// Also trust the simulated secure processor whose keys are in DIR (coffer-sim). Takes
    /// effect only with a policy saying trust_root = "simulation".
    #[arg(long, value_name = "DIR")]
    pub trust_simulation: Option<PathBuf>,
    /// A built image directory: on a measurement mismatch, nearby launches of this image (other
    /// vCPU counts and types, other guest features) are recomputed to name the likely cause.
    #[arg(long, value_name = "DIR", requires = "policy")]
    pub image: Option<PathBuf>,
    /// Print the result as JSON (checks and report fields) instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_time(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(text).map_err(|e| e.to_string())
}

/// Input the user must fix: reported on stderr, exit code 2.
#[derive(Debug)]
struct Unusable(anyhow::Error);

/// Runs `coffer verify report` and returns the exit code (0 accepted, 1 rejected, 2 unusable
/// input; the reason for a 2 is printed on stderr). An `Err` is a failure to print.
pub fn run(args: &VerifyReportArgs) -> anyhow::Result<u8> {
    let (evidence, policy, at) = match load(args) {
        Ok(loaded) => loaded,
        Err(Unusable(err)) => {
            eprintln!("coffer: error: {err:#}");
            return Ok(2);
        }
    };
    let mut roots = AmdRoots::builtin().context("the built-in AMD roots do not parse")?;
    if let Some(dir) = &args.trust_simulation {
        let ark = read(&dir.join("ark.pem"))?;
        let ask = read(&dir.join("ask.pem"))?;
        roots = roots
            .with_simulation_root(&ark, &ask)
            .with_context(|| format!("simulation root in {}", dir.display()))?;
    }
    let verdict = match &policy {
        Some(policy) => verify(&evidence, &roots, policy, at),
        None => verify_authenticity_only(&evidence, &roots, at),
    };
    let summary = ReportSummary::new(&evidence.report, verdict.generation());
    if args.json {
        let out = serde_json::json!({
            "accepted": verdict.accepted(),
            "at": at.to_string(),
            "verdict": verdict,
            "report": summary,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if policy.is_none() {
            print!("{}", render_report(&summary));
            println!();
        }
        let advisor = match (&policy, verdict.measurement_mismatch()) {
            (Some(_), Some(_)) => Some(advisor(args)?),
            _ => None,
        };
        let advisor = advisor.as_ref().map(|(artifacts, pinned)| {
            LaunchCandidates::new(artifacts.as_ref().map(Artifacts::borrow), pinned.clone())
        });
        print!(
            "{}",
            render_text(
                &verdict,
                advisor.as_ref().map(|a| a as &dyn MeasurementAdvisor)
            )
        );
    }
    Ok(if verdict.accepted() { 0 } else { 1 })
}

fn load(args: &VerifyReportArgs) -> Result<(Evidence, Option<Policy>, Timestamp), Unusable> {
    let report_bytes = read(&args.report).map_err(Unusable)?;
    let report = Report::parse(&raw_or_hex(report_bytes))
        .with_context(|| format!("attestation report {}", args.report.display()))
        .map_err(Unusable)?;
    let (vek, ask, ark) = match (&args.vcek, &args.certs) {
        (Some(file), _) => (cert(file)?, None, None),
        (None, Some(dir)) => certs_dir(dir)?,
        (None, None) => return Err(Unusable(anyhow::anyhow!("give --vcek FILE or --certs DIR"))),
    };
    let policy = args
        .policy
        .as_ref()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read policy {}", path.display()))?;
            let text = with_pinned_measurements(&text, &args.pins)?;
            Policy::from_toml(&text).with_context(|| format!("policy {}", path.display()))
        })
        .transpose()
        .map_err(Unusable)?;
    let at = match args.at {
        Some(at) => at,
        None => Timestamp::now()
            .context("reading the system clock")
            .map_err(Unusable)?,
    };
    Ok((
        Evidence {
            report,
            vek,
            ask,
            ark,
        },
        policy,
        at,
    ))
}

/// The VEK, and the ASK/ASVK and ARK if present, from a certificate directory.
fn certs_dir(
    dir: &Path,
) -> Result<(Certificate, Option<Certificate>, Option<Certificate>), Unusable> {
    if !dir.is_dir() {
        return Err(Unusable(anyhow::anyhow!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let one_of = |names: &[&str]| -> Result<Option<PathBuf>, Unusable> {
        let found: Vec<PathBuf> = names
            .iter()
            .map(|n| dir.join(n))
            .filter(|p| p.is_file())
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            many => Err(Unusable(anyhow::anyhow!(
                "{} holds several candidates, keep one: {}",
                dir.display(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    };
    let vek_path = one_of(&[
        "vcek.der", "vcek.pem", "vcek.crt", "vlek.der", "vlek.pem", "vlek.crt",
    ])?
    .ok_or_else(|| {
        Unusable(anyhow::anyhow!(
            "{} holds no vcek.der, vcek.pem, vlek.der or vlek.pem",
            dir.display()
        ))
    })?;
    let vek = cert(&vek_path)?;
    let mut ask = one_of(&["ask.der", "ask.pem", "asvk.der", "asvk.pem"])?
        .map(|p| cert(&p))
        .transpose()?;
    let mut ark = one_of(&["ark.der", "ark.pem"])?
        .map(|p| cert(&p))
        .transpose()?;
    if let Some(chain) = one_of(&["cert_chain.pem", "cert_chain"])? {
        let bytes = read(&chain).map_err(Unusable)?;
        let certs = Certificate::from_pem_bundle(&bytes)
            .with_context(|| format!("certificate chain {}", chain.display()))
            .map_err(Unusable)?;
        let mut certs = certs.into_iter();
        // KDS order: the ASK (or ASVK), then the ARK; separate files take precedence.
        let (chain_ask, chain_ark) = (certs.next(), certs.next());
        ask = ask.or(chain_ask);
        ark = ark.or(chain_ark);
    }
    Ok((vek, ask, ark))
}

/// The measurement sets of the given pin files.
fn pinned_sets(pins: &[PathBuf]) -> anyhow::Result<Vec<MeasurementSet>> {
    let mut sets = Vec::new();
    for path in pins {
        let file: PinFile = serde_json::from_slice(&read(path)?)
            .with_context(|| format!("pin file {}", path.display()))?;
        sets.extend(file.sets);
    }
    Ok(sets)
}

/// The policy text with every pinned launch digest added to `allowed_measurements`.
fn with_pinned_measurements(policy: &str, pins: &[PathBuf]) -> anyhow::Result<String> {
    if pins.is_empty() {
        return Ok(policy.to_owned());
    }
    let mut table: toml::Table = policy.parse().context("policy is not TOML")?;
    let allowed = table
        .entry("allowed_measurements")
        .or_insert_with(|| toml::Value::Array(Vec::new()));
    let toml::Value::Array(list) = allowed else {
        anyhow::bail!("policy: allowed_measurements is not a list");
    };
    for set in pinned_sets(pins)? {
        list.extend(
            set.snp
                .into_iter()
                .map(|p| toml::Value::String(p.launch_digest)),
        );
    }
    Ok(table.to_string())
}

/// An image's launch inputs, read for the measurement advisor.
struct Artifacts {
    firmware: Vec<u8>,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    cmdline: String,
}

impl Artifacts {
    fn borrow(&self) -> ImageArtifacts<'_> {
        ImageArtifacts {
            firmware: &self.firmware,
            kernel: &self.kernel,
            initrd: &self.initrd,
            cmdline: &self.cmdline,
        }
    }
}

/// What the advisor needs: the image's artifacts (with --image) and the pinned sets (from
/// --pins, and the image's own measurements.json).
fn advisor(args: &VerifyReportArgs) -> anyhow::Result<(Option<Artifacts>, Vec<MeasurementSet>)> {
    let mut pinned = pinned_sets(&args.pins)?;
    let artifacts = match &args.image {
        None => None,
        Some(dir) => {
            let own = dir.join(coffer_types::MEASUREMENTS_FILE);
            if let Ok(bytes) = std::fs::read(&own) {
                pinned.push(
                    serde_json::from_slice(&bytes).with_context(|| format!("{}", own.display()))?,
                );
            }
            Some(Artifacts {
                firmware: read(&dir.join("firmware.fd"))?,
                kernel: read(&dir.join("vmlinuz"))?,
                initrd: read(&dir.join("initramfs.cpio.gz"))?,
                cmdline: String::from_utf8(read(&dir.join("cmdline"))?)
                    .context("the image's cmdline is not UTF-8")?,
            })
        }
    };
    Ok((artifacts, pinned))
}

fn cert(path: &Path) -> Result<Certificate, Unusable> {
    let bytes = read(path).map_err(Unusable)?;
    Certificate::from_pem_or_der(&bytes)
        .with_context(|| format!("certificate {}", path.display()))
        .map_err(Unusable)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A report file is raw bytes; a hex dump of one (as some tools write) is decoded.
fn raw_or_hex(bytes: Vec<u8>) -> Vec<u8> {
    let digits: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if digits.len() != 2 * coffer_verify::report::REPORT_SIZE {
        return bytes;
    }
    hex::decode(&digits).unwrap_or(bytes)
}

/// `coffer verify azure --evidence E --nonce HEX [--policy P] [--pcr-pins F] [--at TIME]`.
#[derive(Debug, Clone, Args)]
pub struct VerifyAzureArgs {
    /// Azure vTPM evidence: Trustee `az-snp-vtpm` JSON (version 1 or 2) with the HCL report, the
    /// VCEK and the TPM2 quote.
    #[arg(long, value_name = "FILE")]
    pub evidence: PathBuf,
    /// The nonce the quote must carry (hex): the verifier's own, fresh challenge.
    #[arg(long, value_name = "HEX")]
    pub nonce: String,
    /// SEV-SNP policy (TOML) for the report inside the HCL report: on Azure pin policy, TCB and
    /// Microsoft's id_key digest there, not report_data (it is the claims hash, checked here).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// PCR pins (TOML: `"11" = ["<64 hex digits>", ...]`) for the image; without them only
    /// authenticity is checked.
    #[arg(long, value_name = "FILE")]
    pub pcr_pins: Option<PathBuf>,
    /// Check certificate dates at this time (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<Timestamp>,
    /// Print the result as JSON (both halves' checks) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `coffer verify azure`: the SNP half (coffer-verify, on the report inside the HCL report)
/// and the vTPM half (coffer-vtpm: claims binding, AK, quote, nonce, PCRs). Accepted only if
/// both pass. Exit codes as for `verify report`.
pub fn run_azure(args: &VerifyAzureArgs) -> anyhow::Result<u8> {
    let loaded = (|| -> anyhow::Result<_> {
        let bytes = read(&args.evidence)?;
        let evidence = coffer_vtpm::evidence::parse_trustee_json(&bytes)
            .with_context(|| format!("evidence {}", args.evidence.display()))?;
        let hcl = coffer_vtpm::HclReport::parse(&evidence.hcl_report)
            .with_context(|| format!("HCL report in {}", args.evidence.display()))?;
        let snp = hcl
            .snp_report()
            .context("the HCL report holds no SEV-SNP report (TDX is not supported here)")?;
        let snp = Evidence::parse(snp, &evidence.vcek, None, None)
            .with_context(|| format!("SEV-SNP evidence in {}", args.evidence.display()))?;
        let nonce = hex::decode(&args.nonce).context("--nonce is not hex")?;
        let policy = match &args.policy {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read policy {}", path.display()))?;
                Some(
                    Policy::from_toml(&text)
                        .with_context(|| format!("policy {}", path.display()))?,
                )
            }
            None => None,
        };
        let pins = args.pcr_pins.as_deref().map(pcr_pins).transpose()?;
        let at = match args.at {
            Some(at) => at,
            None => Timestamp::now().context("reading the system clock")?,
        };
        Ok((evidence, hcl, snp, nonce, policy, pins, at))
    })();
    let (evidence, hcl, snp, nonce, policy, pins, at) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("coffer: error: {err:#}");
            return Ok(2);
        }
    };
    let roots = AmdRoots::builtin().context("the built-in AMD roots do not parse")?;
    let snp_verdict = match &policy {
        Some(policy) => verify(&snp, &roots, policy, at),
        None => verify_authenticity_only(&snp, &roots, at),
    };
    let vtpm_verdict = match &pins {
        Some(pins) => coffer_vtpm::verify_azure_vtpm(&hcl, &evidence.quote, &nonce, pins),
        None => coffer_vtpm::verify_azure_vtpm_authenticity(&hcl, &evidence.quote, &nonce),
    };
    let accepted = snp_verdict.accepted() && vtpm_verdict.passed();
    if args.json {
        let out = serde_json::json!({
            "accepted": accepted,
            "at": at.to_string(),
            "policy_applied": policy.is_some(),
            "pcr_pins_applied": pins.is_some(),
            "snp": snp_verdict,
            "vtpm": vtpm_verdict,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(if accepted { 0 } else { 1 });
    }
    println!("SEV-SNP report (inside the HCL report):");
    print!("{}", render_text(&snp_verdict, None));
    println!();
    println!("vTPM (claims binding, AK, quote, PCRs):");
    println!("{vtpm_verdict}");
    let scope = if policy.is_some() && pins.is_some() {
        "policy and PCR pins applied"
    } else {
        "authenticity only for the parts without a policy or pins"
    };
    println!(
        "{}: Azure vTPM evidence ({scope})",
        if accepted { "ACCEPTED" } else { "REJECTED" }
    );
    Ok(if accepted { 0 } else { 1 })
}

/// Reads PCR pins: TOML keys are PCR indices, values lists of allowed sha256 values (hex).
fn pcr_pins(path: &Path) -> anyhow::Result<coffer_vtpm::PcrPins> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read PCR pins {}", path.display()))?;
    let table: std::collections::BTreeMap<String, Vec<String>> =
        toml::from_str(&text).with_context(|| format!("PCR pins {}", path.display()))?;
    let mut pins = coffer_vtpm::PcrPins::new();
    for (index, values) in table {
        let index: u8 = index.parse().with_context(|| {
            format!("PCR pins {}: '{index}' is not a PCR index", path.display())
        })?;
        let values = values
            .iter()
            .map(|v| {
                let bytes = hex::decode(v)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                bytes.with_context(|| format!("PCR {index}: '{v}' is not 64 hex digits"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        pins = pins
            .pin(index, values)
            .with_context(|| format!("PCR pins {}", path.display()))?;
    }
    Ok(pins)
}

/// `coffer verify endpoint https://HOST[:PORT] --deployment FILE [...]`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyEndpointArgs {
    /// The server, https://HOST[:PORT].
    pub url: String,
    /// The deployment manifest the server must belong to (its pins and root).
    #[arg(long, value_name = "FILE")]
    pub deployment: PathBuf,
    /// The role the server must prove [default: any role of the deployment].
    #[arg(long)]
    pub role: Option<coffer_types::Role>,
    /// Accept a deployment whose root is the simulated secure processor (development and CI
    /// only: simulated evidence proves nothing about hardware).
    #[arg(long)]
    pub allow_simulation: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The trust a deployment manifest file gives, simulation accepted only when asked for.
pub fn trust_from(deployment: &Path, allow_simulation: bool) -> anyhow::Result<coffer_mesh::Trust> {
    let manifest = std::fs::read(deployment)
        .with_context(|| format!("cannot read {}", deployment.display()))?;
    let simulation = if allow_simulation {
        coffer_mesh::Simulation::DangerousAccept
    } else {
        coffer_mesh::Simulation::Refuse
    };
    Ok(coffer_mesh::Trust::from_manifest(&manifest, simulation)?)
}

/// Checks a server's attestation endpoint; 0 accepted, 1 refused.
pub fn run_endpoint(args: &VerifyEndpointArgs) -> anyhow::Result<u8> {
    let trust = trust_from(&args.deployment, args.allow_simulation)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(coffer_mesh::endpoint::check_endpoint(
        &args.url, &trust, args.role,
    ));
    match result {
        Ok(check) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "accepted": true,
                        "role": check.peer.role,
                        "measurement": hex::encode(check.peer.measurement),
                        "deployment_id": check.peer.deployment_id,
                        "trust_root": check.peer.trust_root,
                        "tls_spki_sha256": check.tls_spki_sha256,
                        "nonce": check.nonce,
                        "claims": check.claims,
                    })
                );
            } else {
                println!("ACCEPTED: {} is {}", args.url, check.peer);
                println!("  TLS public key sha256 {}", check.tls_spki_sha256);
                println!("  fresh nonce {}", check.nonce);
                for (name, value) in &check.claims {
                    println!("  claim {name} = {value} (bound into the evidence)");
                }
                if check.peer.trust_root == coffer_verify::TrustRoot::Simulation {
                    println!("  WARNING: simulated secure processor, NOT AMD hardware");
                }
            }
            Ok(0)
        }
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "accepted": false, "error": e.name(), "message": e.to_string() })
                );
            } else {
                println!("REFUSED: {} ({}): {e}", args.url, e.name());
            }
            Ok(1)
        }
    }
}
