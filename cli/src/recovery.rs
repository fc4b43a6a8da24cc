//! `coffer recovery`: a recovery officer's side of the KMS root key's k-of-n recovery, run
//! offline on the officer's own machine (the work is in `coffer_kms::recovery`).
//!
//! - `keygen` writes an age X25519 identity file (mode 0600, never over an existing file) and
//!   prints its recipient, the `age1...` public key that goes in the deployment manifest.
//! - `reencrypt` opens the officer's share with their identity, shows what it is (deployment,
//!   index, threshold, split, root key commitment), and encrypts it to a restoring KMS's
//!   session recipient. Only for a session whose attested evidence the officer checked.
//! - `kit` downloads the recovery kit from a KMS whose attestation endpoint verifies.
//! - `submit` does `reencrypt` against a restoring KMS end to end: verifies its attestation
//!   endpoint, checks that the split and root key commitment it states (bound into its
//!   evidence) are the ones of the officer's share, re-encrypts to the recipient it states, and
//!   posts the share over a TLS connection to the very key the evidence bound.
//!
//! The identity file is read into a zeroizing buffer and never printed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use coffer_kms::recovery;
use zeroize::Zeroizing;

/// The largest identity file read (one is about 200 bytes).
const MAX_IDENTITY_FILE: u64 = 64 * 1024;

#[derive(Subcommand)]
pub(crate) enum RecoveryCommand {
    /// Make a recovery officer's identity: an age X25519 key pair. Writes the identity file
    /// (mode 0600) and prints the recipient (age1...) to name in the deployment manifest.
    Keygen(KeygenArgs),
    /// Re-encrypt your share to a restoring KMS's session recipient, after checking that the
    /// KMS's attested evidence binds that recipient. Shows what the share is first.
    Reencrypt(ReencryptArgs),
    /// Download the recovery kit from a KMS whose attestation endpoint verifies against the
    /// deployment (the shares inside are encrypted to the officers).
    Kit(FetchArgs),
    /// Download a backup of the KMS's state (sealed under a key derived from its root key: only
    /// a KMS holding that root key, e.g. one the officers restore, opens it).
    Backup(FetchArgs),
    /// Hand your share to a restoring KMS: verify its attestation endpoint, check that it
    /// restores the split and root key your share belongs to, re-encrypt the share to the
    /// recipient its evidence binds, and post it over a connection to that attested TLS key.
    Submit(SubmitArgs),
}

/// Which KMS, checked how.
#[derive(Args)]
pub(crate) struct KmsEndpointArgs {
    /// The KMS's attestation endpoint, https://HOST:PORT.
    #[arg(long, value_name = "URL")]
    kms: String,
    /// The deployment manifest the KMS must belong to (its pins and root).
    #[arg(long, value_name = "FILE")]
    deployment: PathBuf,
    /// Accept a deployment whose root is the simulated secure processor (development and CI
    /// only).
    #[arg(long)]
    allow_simulation: bool,
}

#[derive(Args)]
pub(crate) struct FetchArgs {
    #[command(flatten)]
    endpoint: KmsEndpointArgs,
    /// Where to write the kit (must not exist yet).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    endpoint: KmsEndpointArgs,
    /// The recovery kit (from `coffer recovery kit` when the KMS was healthy).
    #[arg(long, value_name = "FILE")]
    kit: PathBuf,
    /// Your identity file.
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// Also hand over this backup (from `coffer recovery backup`), before the share: the
    /// restored KMS starts from its records.
    #[arg(long, value_name = "FILE")]
    backup: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the identity (must not exist yet).
    #[arg(long, value_name = "IDENTITY_FILE")]
    out: PathBuf,
}

#[derive(Args)]
pub(crate) struct ReencryptArgs {
    /// Your share, as the KMS's recovery kit holds it (age-encrypted to you).
    #[arg(long, value_name = "FILE")]
    share: PathBuf,
    /// Your identity file (from `coffer recovery keygen`, or age-keygen).
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// The restoring KMS's session recipient (age1...).
    #[arg(long, value_name = "RECIPIENT")]
    to: String,
    /// Where to write the re-encrypted share (must not exist yet).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub(crate) fn run(command: &RecoveryCommand) -> anyhow::Result<()> {
    match command {
        RecoveryCommand::Keygen(args) => keygen(args),
        RecoveryCommand::Reencrypt(args) => reencrypt(args),
        RecoveryCommand::Kit(args) => kit(args),
        RecoveryCommand::Backup(args) => backup(args),
        RecoveryCommand::Submit(args) => submit(args),
    }
}

/// Verifies the KMS's attestation endpoint against the deployment (role kms).
fn check_kms(
    args: &KmsEndpointArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<coffer_mesh::endpoint::EndpointCheck> {
    let trust = crate::verify::trust_from(&args.deployment, args.allow_simulation)?;
    let check = runtime
        .block_on(coffer_mesh::endpoint::check_endpoint(
            &args.kms,
            &trust,
            Some(coffer_types::Role::Kms),
        ))
        .with_context(|| format!("{}: the KMS's attestation does not verify", args.kms))?;
    eprintln!("coffer: {} is {}", args.kms, check.peer);
    if check.peer.trust_root == coffer_verify::TrustRoot::Simulation {
        eprintln!("coffer: WARNING: simulated secure processor, NOT AMD hardware");
    }
    Ok(check)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// One request to the attested KMS, over its attested TLS key; the body of a 2xx answer.
fn request(
    runtime: &tokio::runtime::Runtime,
    check: &coffer_mesh::endpoint::EndpointCheck,
    url: &str,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let (status, body) = runtime.block_on(coffer_mesh::endpoint::request_attested(
        url,
        &check.tls_spki_sha256,
        method,
        path,
        body.into(),
    ))?;
    if !status.is_success() {
        anyhow::bail!(
            "{url}{path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body.to_vec())
}

/// `GET path` from the attested KMS.
fn fetch(args: &FetchArgs, path: &str) -> anyhow::Result<Vec<u8>> {
    let runtime = runtime()?;
    let check = check_kms(&args.endpoint, &runtime)?;
    request(
        &runtime,
        &check,
        &args.endpoint.kms,
        hyper::Method::GET,
        path,
        Vec::new(),
    )
}

fn kit(args: &FetchArgs) -> anyhow::Result<()> {
    let body = fetch(args, recovery::endpoint::KIT_PATH)?;
    let kit = recovery::RecoveryKit::from_json(&body).context("the KMS's recovery kit")?;
    create_new(&args.out, 0o644)?
        .write_all(&body)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "recovery kit of deployment {}: any {} of {} officers restore\n  split {}\n  root key commitment {}\n  written to {}",
        kit.info.deployment_id,
        kit.info.threshold,
        kit.info.officers.len(),
        hex::encode(kit.info.split_id),
        hex::encode(kit.info.commitment),
        args.out.display()
    );
    Ok(())
}

fn backup(args: &FetchArgs) -> anyhow::Result<()> {
    let body = fetch(args, recovery::endpoint::BACKUP_PATH)?;
    create_new(&args.out, 0o600)?
        .write_all(&body)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "backup of {} ({} bytes, sealed under its root key): {}",
        args.endpoint.kms,
        body.len(),
        args.out.display()
    );
    Ok(())
}

fn submit(args: &SubmitArgs) -> anyhow::Result<()> {
    use recovery::endpoint::{COMMITMENT_CLAIM, RECIPIENT_CLAIM, SHARE_PATH, SPLIT_CLAIM};
    let identity = read_identity(&args.identity)?;
    let kit_bytes =
        std::fs::read(&args.kit).with_context(|| format!("cannot read {}", args.kit.display()))?;
    let kit = recovery::RecoveryKit::from_json(&kit_bytes)
        .with_context(|| format!("{}", args.kit.display()))?;
    let me = identity.to_public().to_string();
    let share = kit
        .shares
        .iter()
        .find(|s| s.officer == me)
        .ok_or_else(|| anyhow::anyhow!("the kit holds no share for {me} (this identity)"))?;
    let info = recovery::share_info(share.age.as_bytes(), &identity)?;
    let runtime = runtime()?;
    let check = check_kms(&args.endpoint, &runtime)?;
    let claim = |name: &str| {
        check.claims.get(name).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "{} states no {name}: it is not restoring (its claims: {:?})",
                args.endpoint.kms,
                check.claims.keys().collect::<Vec<_>>()
            )
        })
    };
    let (recipient, split, commitment) = (
        claim(RECIPIENT_CLAIM)?,
        claim(SPLIT_CLAIM)?,
        claim(COMMITMENT_CLAIM)?,
    );
    for (what, attested, ours) in [
        ("split", &split, hex::encode(info.split_id)),
        (
            "root key commitment",
            &commitment,
            hex::encode(info.commitment),
        ),
    ] {
        if *attested != ours {
            anyhow::bail!(
                "the attested KMS restores {what} {attested}, your share is for {ours}: not submitting"
            );
        }
    }
    if let Some(path) = &args.backup {
        let backup =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        request(
            &runtime,
            &check,
            &args.endpoint.kms,
            hyper::Method::POST,
            recovery::endpoint::BACKUP_PATH,
            backup,
        )?;
        eprintln!("coffer: backup {} handed over", path.display());
    }
    let reencrypted = recovery::reencrypt_share(share.age.as_bytes(), &identity, &recipient)?;
    let answer = request(
        &runtime,
        &check,
        &args.endpoint.kms,
        hyper::Method::POST,
        SHARE_PATH,
        reencrypted,
    )?;
    println!(
        "share {} of {} (any {} restore) handed to {} (recipient {recipient}): {}",
        info.index,
        info.shares,
        info.threshold,
        args.endpoint.kms,
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let (text, recipient) = recovery::new_officer_identity();
    create_new(&args.out, 0o600)?
        .write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "coffer: wrote a recovery officer identity to {} (mode 0600): keep it offline",
        args.out.display()
    );
    println!("{recipient}");
    Ok(())
}

fn reencrypt(args: &ReencryptArgs) -> anyhow::Result<()> {
    let identity = read_identity(&args.identity)?;
    let share = std::fs::read(&args.share)
        .with_context(|| format!("cannot read {}", args.share.display()))?;
    let what = |e| anyhow::Error::new(e).context(format!("share {}", args.share.display()));
    let info = recovery::share_info(&share, &identity).map_err(what)?;
    let reencrypted = recovery::reencrypt_share(&share, &identity, &args.to).map_err(what)?;
    create_new(&args.out, 0o644)?
        .write_all(&reencrypted)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "share {} of {} (any {} restore) of deployment {}\n  split {}\n  root key commitment {}\n  re-encrypted to {}: {}",
        info.index,
        info.shares,
        info.threshold,
        info.deployment_id,
        hex::encode(info.split_id),
        hex::encode(info.commitment),
        args.to,
        args.out.display()
    );
    Ok(())
}

/// Reads an identity file into a zeroizing buffer sized up front (no reallocated copy).
fn read_identity(path: &Path) -> anyhow::Result<recovery::OfficerIdentity> {
    let context = || format!("cannot read identity file {}", path.display());
    let mut file = File::open(path).with_context(context)?;
    let meta = file.metadata().with_context(context)?;
    if meta.len() > MAX_IDENTITY_FILE {
        anyhow::bail!(
            "identity file {} is {} bytes: not an identity file",
            path.display(),
            meta.len()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "coffer: warning: identity file {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let capacity = usize::try_from(meta.len()).unwrap_or(0) + 1;
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    Read::by_ref(&mut file)
        .take(MAX_IDENTITY_FILE)
        .read_to_end(&mut bytes)
        .with_context(context)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("identity file {} is not text", path.display()))?;
    recovery::parse_officer_identity(text).with_context(|| format!("{}", path.display()))
}

fn create_new(path: &Path, mode: u32) -> anyhow::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
}
