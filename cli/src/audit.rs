//! `coffer audit verify`: check a downloaded audit log (or a proof bundle of some of its
//! entries) offline against the checkpoint keys the user trusts and the checkpoints they trusted
//! before.
//!
//! Thin glue: read the files (bounded), hand the bytes to `coffer_tlog::bundle`, print one
//! verdict line. **Trusts:** only the `--trust` keys and the `--previous` checkpoints (which must
//! verify with those keys). **Exit codes:** 0 verified, 1 rejected (a fork, a truncation, a
//! modified entry, a missing co-signature, ...: `REJECTED (<code>): <reason>` on stdout), 2
//! unusable input (an unreadable file, malformed JSON, a bad key string: one error line on
//! stderr).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::{ArgGroup, Args, Subcommand};
use coffer_tlog::bundle::{
    verify_bundle, verify_log, AuditError, LogExport, ProofBundle, Report, MAX_BUNDLE_LEN,
    MAX_EXPORT_LEN,
};
use coffer_tlog::note::MAX_NOTE_LEN;
use coffer_tlog::{Checkpoint, TrustedKeys, VerifierKey};

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify a downloaded audit log (--log) or proof bundle (--bundle) against trusted
    /// checkpoint keys: reports any fork, truncation or modified entry. Exit 0 verified,
    /// 1 rejected, 2 unusable input.
    Verify(VerifyArgs),
}

/// `coffer audit verify (--log FILE | --bundle FILE) --trust VKEY... [--require NAME]...
/// [--previous FILE]...`.
#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["log", "bundle"])))]
pub(crate) struct VerifyArgs {
    /// A log export (JSON: origin, every entry, signed checkpoints).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// A proof bundle (JSON: entries with inclusion proofs, one signed checkpoint, consistency
    /// proofs from older ones).
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// A checkpoint key to trust, as a C2SP verifier key string `name+id+base64` (e.g. the
    /// control plane's and the KMS's `<origin>/kms`). Repeatable.
    #[arg(long = "trust", value_name = "VKEY", required = true)]
    trust: Vec<String>,
    /// A trusted key name that must have signed every checkpoint. Repeatable [default: every
    /// --trust key].
    #[arg(long = "require", value_name = "NAME")]
    require: Vec<String>,
    /// A signed checkpoint note you trusted before: the log must still extend it. Repeatable.
    #[arg(long = "previous", value_name = "FILE")]
    previous: Vec<PathBuf>,
}

/// Input the user must fix: reported on stderr, exit code 2.
struct Unusable(anyhow::Error);

impl From<anyhow::Error> for Unusable {
    fn from(err: anyhow::Error) -> Self {
        Self(err)
    }
}

/// Runs `coffer audit verify` and returns the exit code (0 verified, 1 rejected, 2 unusable
/// input, whose reason is printed on stderr).
pub(crate) fn run(command: &AuditCommand) -> u8 {
    let AuditCommand::Verify(args) = command;
    match verify(args) {
        Ok(Ok(report)) => {
            print_verified(&report, args.log.is_some());
            0
        }
        Ok(Err(refused)) if !refused.is_malformed() => {
            println!("REJECTED ({}): {refused}", refused.code());
            1
        }
        Ok(Err(malformed)) => {
            let file = args.log.as_ref().or(args.bundle.as_ref());
            let file = file.map(|f| f.display().to_string()).unwrap_or_default();
            eprintln!("coffer: error: {file}: {malformed}");
            2
        }
        Err(Unusable(err)) => {
            eprintln!("coffer: error: {err:#}");
            2
        }
    }
}

fn verify(args: &VerifyArgs) -> Result<Result<Report, AuditError>, Unusable> {
    let keys = args
        .trust
        .iter()
        .map(|vkey| VerifierKey::parse(vkey).context("--trust"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let trusted = TrustedKeys::new(keys.iter().cloned()).context("--trust")?;
    let required: Vec<VerifierKey> = if args.require.is_empty() {
        keys
    } else {
        let mut required = Vec::new();
        for name in &args.require {
            let named: Vec<VerifierKey> =
                keys.iter().filter(|k| k.name() == name).cloned().collect();
            if named.is_empty() {
                return Err(anyhow!("--require {name}: no --trust key has that name").into());
            }
            required.extend(named);
        }
        required
    };
    let previous = args
        .previous
        .iter()
        .map(|path| previous_checkpoint(path, &trusted))
        .collect::<anyhow::Result<Vec<_>>>()?;
    match (&args.log, &args.bundle) {
        (Some(path), _) => {
            let export = match LogExport::parse(&read_bounded(path, MAX_EXPORT_LEN)?) {
                Ok(export) => export,
                Err(err) => return Ok(Err(err)),
            };
            Ok(verify_log(&export, &trusted, &required, &previous))
        }
        (None, Some(path)) => {
            let bundle = match ProofBundle::parse(&read_bounded(path, MAX_BUNDLE_LEN)?) {
                Ok(bundle) => bundle,
                Err(err) => return Ok(Err(err)),
            };
            Ok(verify_bundle(&bundle, &trusted, &required, &previous))
        }
        (None, None) => Err(anyhow!("give --log FILE or --bundle FILE").into()),
    }
}

/// A checkpoint the user trusted before: a signed note that must verify with the trusted keys.
fn previous_checkpoint(path: &Path, trusted: &TrustedKeys) -> anyhow::Result<Checkpoint> {
    let bytes = read_bounded(path, MAX_NOTE_LEN)?;
    let note = coffer_tlog::note::open(&bytes, trusted)
        .with_context(|| format!("--previous {}", path.display()))?;
    Checkpoint::from_note(&note).with_context(|| format!("--previous {}", path.display()))
}

/// The file's bytes, refusing one of more than `max` bytes without reading it all.
fn read_bounded(path: &Path, max: usize) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > max {
        anyhow::bail!("{} is more than the {max} bytes allowed", path.display());
    }
    Ok(bytes)
}

fn print_verified(report: &Report, is_log: bool) {
    println!(
        "VERIFIED: {} {} entries, newest checkpoint size {} root {} signed by [{}]",
        report.origin,
        report.entries,
        report.newest.size(),
        hex::encode(report.newest.root()),
        report.signed_by.join(", ")
    );
    println!(
        "  {} signed checkpoint(s) checked; {} previously trusted checkpoint(s) are prefixes of the log",
        report.checkpoints, report.previous
    );
    if is_log && report.beyond_newest > 0 {
        println!(
            "  {} entries after the newest checkpoint are not covered by any signature yet",
            report.beyond_newest
        );
    }
}
