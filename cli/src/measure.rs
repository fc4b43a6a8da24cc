//! `coffer measure snp`: the SEV-SNP launch digest of a QEMU measured direct boot.
//!
//! A drop-in for `sev-snp-measure --mode snp` (the reference, PyPI 0.0.13): the same flags, the
//! same defaults, the same printed line. The digest comes from `coffer-measurements`; this file
//! only reads the files and the flags.
//!
//! Deliberate differences: only `--mode snp` (and `snp:svsm`, `sev`, ... are refused by name);
//! `--mode` may be left out; the three ways to name the vCPU are mutually exclusive instead of
//! silently ranked; out-of-range family/model/stepping are refused instead of masked; firmware
//! without SEV metadata is refused (QEMU cannot launch it) where the reference prints a digest.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use clap::{ArgGroup, Args, ValueEnum};
use coffer_measurements::snp::{
    firmware_digest, CpuSignature, GuestFeatures, LaunchDigest, SevHashes, SnpLaunch, Vmm,
    VCPU_TYPES,
};

/// The flags of `sev-snp-measure --mode snp`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("vcpu").args(["vcpu_type", "vcpu_sig", "vcpu_family"])))]
pub struct MeasureSnpArgs {
    /// Guest mode: only `snp` (SEV-SNP) is supported.
    #[arg(long, value_name = "MODE", default_value = "snp", value_parser = parse_mode)]
    pub mode: String,
    /// Number of guest vCPUs (QEMU `-smp`).
    #[arg(long, value_name = "N")]
    pub vcpus: u32,
    /// Type of guest vCPU (QEMU `-cpu` model); needed for --vmm-type QEMU unless --vcpu-sig or
    /// --vcpu-family is given.
    #[arg(long, value_name = "CPUTYPE", value_parser = vcpu_types())]
    pub vcpu_type: Option<String>,
    /// Guest vCPU signature value (CPUID Fn0000_0001_EAX; 0x prefix for hex).
    #[arg(long, value_name = "VALUE", value_parser = parse_u32_auto)]
    pub vcpu_sig: Option<u32>,
    /// Guest vCPU family (with --vcpu-model and --vcpu-stepping).
    #[arg(long, value_name = "FAMILY", requires_all = ["vcpu_model", "vcpu_stepping"])]
    pub vcpu_family: Option<u32>,
    /// Guest vCPU model.
    #[arg(long, value_name = "MODEL", requires = "vcpu_family")]
    pub vcpu_model: Option<u32>,
    /// Guest vCPU stepping.
    #[arg(long, value_name = "STEPPING", requires = "vcpu_family")]
    pub vcpu_stepping: Option<u32>,
    /// Type of guest VMM.
    #[arg(long, value_name = "VMMTYPE", default_value = "QEMU", value_parser = vmm_types())]
    pub vmm_type: String,
    /// OVMF firmware image (an AmdSev build with SEV metadata).
    #[arg(long, value_name = "PATH")]
    pub ovmf: PathBuf,
    /// Kernel booted with QEMU `-kernel` (measured through the SEV hashes table).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd booted with QEMU `-initrd` (use with --kernel).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line, QEMU `-append` (use with --kernel).
    #[arg(long, value_name = "CMDLINE", requires = "kernel")]
    pub append: Option<String>,
    /// Guest SEV features (VMSA SEV_FEATURES); 0x prefix for hex. 0x1 for upstream QEMU/KVM,
    /// 0x21 for older AMD host kernels with debug-swap.
    #[arg(long, value_name = "VALUE", default_value = "0x1", value_parser = parse_u64_auto)]
    pub guest_features: u64,
    /// Measurement output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Hex)]
    pub output_format: OutputFormat,
    /// Precalculated digest of the OVMF pages (hex), skipping hashing the firmware again.
    #[arg(long, value_name = "HASH")]
    pub snp_ovmf_hash: Option<String>,
    /// Print "Calculated SEV_SNP guest measurement: " before the digest.
    #[arg(short, long)]
    pub verbose: bool,
}

/// How the digest is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// 96 lower-case hex digits.
    Hex,
    /// 64 characters of standard base64.
    Base64,
}

/// Computes the launch digest and returns the line `sev-snp-measure` prints for the same flags,
/// without its newline.
pub fn run(args: &MeasureSnpArgs) -> anyhow::Result<String> {
    let vcpu = match (args.vcpu_family, args.vcpu_sig, &args.vcpu_type) {
        (Some(family), _, _) => Some(CpuSignature::from_family_model_stepping(
            family,
            args.vcpu_model.unwrap_or_default(),
            args.vcpu_stepping.unwrap_or_default(),
        )?),
        (None, Some(sig), _) => Some(CpuSignature::from_raw(sig)),
        (None, None, Some(name)) => Some(CpuSignature::from_vcpu_type(name)?),
        (None, None, None) => None,
    };
    let vmm = match Vmm::from_name(&args.vmm_type, vcpu) {
        Ok(vmm) => vmm,
        Err(coffer_measurements::snp::ConfigError::MissingVcpuSignature) => anyhow::bail!(
            "missing --vcpu-type or --vcpu-sig or --vcpu-family in guest mode '{}'",
            args.mode
        ),
        Err(e) => return Err(e.into()),
    };

    let firmware = read(&args.ovmf, "OVMF firmware")?;
    let kernel = args
        .kernel
        .as_deref()
        .map(|p| read(p, "kernel"))
        .transpose()?;
    let initrd = args
        .initrd
        .as_deref()
        .map(|p| read(p, "initrd"))
        .transpose()?;

    // The two big hashing jobs are independent: the SEV hashes table (SHA-256 of kernel and
    // initrd) on a second thread while this one hashes the firmware pages (SHA-384).
    let (hashes, firmware_pages) = std::thread::scope(|scope| {
        let hashes = kernel.as_deref().map(|kernel| {
            let (initrd, append) = (initrd.as_deref(), args.append.as_deref());
            scope.spawn(move || SevHashes::new(kernel, initrd, append))
        });
        let firmware_pages = match &args.snp_ovmf_hash {
            Some(hash) => hash.parse::<LaunchDigest>().context("--snp-ovmf-hash"),
            None => firmware_digest(&firmware)
                .with_context(|| format!("measuring {}", args.ovmf.display())),
        };
        let hashes = hashes
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("the hashing thread failed"))
            })
            .transpose();
        (hashes, firmware_pages)
    });
    let mut launch = SnpLaunch::new(&firmware, args.vcpus, vmm)
        .guest_features(GuestFeatures::from_bits(args.guest_features))
        .precomputed_firmware_digest(firmware_pages?);
    if let Some(hashes) = hashes? {
        launch = launch.direct_boot_hashes(hashes);
    }
    let digest = launch
        .measure()
        .with_context(|| format!("measuring {}", args.ovmf.display()))?;

    let text = match args.output_format {
        OutputFormat::Hex => digest.to_hex(),
        OutputFormat::Base64 => digest.to_base64(),
    };
    Ok(if args.verbose {
        format!("Calculated SEV_SNP guest measurement: {text}")
    } else {
        text
    })
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// The QEMU CPU model names of the reference's table.
fn vcpu_types() -> PossibleValuesParser {
    PossibleValuesParser::new(VCPU_TYPES.map(|(name, _)| name))
}

/// The reference's VMM type names (case-sensitive).
fn vmm_types() -> PossibleValuesParser {
    PossibleValuesParser::new(["QEMU", "ec2", "gce"])
}

fn parse_mode(mode: &str) -> Result<String, String> {
    match mode {
        "snp" => Ok(mode.to_owned()),
        "sev" | "seves" | "snp:ovmf-hash" | "snp:svsm" => Err(format!(
            "mode '{mode}' is not supported: coffer measures SEV-SNP launches only (--mode snp)"
        )),
        _ => Err(format!("unknown mode '{mode}': only 'snp' is supported")),
    }
}

fn parse_u32_auto(text: &str) -> Result<u32, String> {
    let v = parse_uint_auto(text)?;
    u32::try_from(v).map_err(|_| format!("{text} does not fit in 32 bits"))
}

fn parse_u64_auto(text: &str) -> Result<u64, String> {
    parse_uint_auto(text)
}

/// Parses an unsigned integer the way Python's `int(text, 0)` does, as the reference does:
/// `0x`/`0o`/`0b` prefixes, otherwise decimal without leading zeros, `_` between digits.
fn parse_uint_auto(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid integer '{text}' (use decimal, or 0x/0o/0b prefixes)");
    let t = text.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    let lower = t.to_ascii_lowercase();
    let (radix, digits) = match lower.get(..2) {
        Some("0x") => (16, &lower[2..]),
        Some("0o") => (8, &lower[2..]),
        Some("0b") => (2, &lower[2..]),
        _ => (10, lower.as_str()),
    };
    // `_` may follow a base prefix or sit between two digits, never doubled or at the end.
    let digits = if radix == 10 {
        digits
    } else {
        digits.strip_prefix('_').unwrap_or(digits)
    };
    if digits.is_empty()
        || !digits
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return Err(bad());
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    if radix == 10 && clean.len() > 1 && clean.starts_with('0') && clean.chars().any(|c| c != '0') {
        return Err(bad());
    }
    u64::from_str_radix(&clean, radix).map_err(|_| bad())
}
