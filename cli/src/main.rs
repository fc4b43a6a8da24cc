//! `coffer`: the one command users and tests drive Coffer with.
//!
//! Thin by design: argument parsing and output here, the work in the library crates
//! (`coffer-image`, `coffer-qemu`, ...). Exit codes: 0 success, 1 failure, 2 unusable input
//! (bad arguments, a broken spec, a tampered input, a busy port).

#![forbid(unsafe_code)]

mod audit;
mod deployment;
mod measure;
mod recovery;
mod sim;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use coffer_image::{BuildRequest, ImageError, Progress};
use coffer_qemu::{Accel, LaunchError, LaunchOptions, StopOutcome};
use coffer_types::Role;

#[derive(Parser)]
#[command(
    name = "coffer",
    version,
    about = "Build, boot, measure and verify Coffer confidential-computing appliances.",
    long_about = "Build, boot, measure and verify Coffer confidential-computing appliances.\n\n\
        Typical use:\n  \
        coffer image build kms            # build the kms image into out/images/kms\n  \
        coffer run out/images/kms --detach  # boot it under QEMU, wait until healthy\n  \
        coffer stop kms                   # ACPI power-down, wait for a clean power-off"
)]
struct Cli {
    /// Where running VMs are recorded [default: $COFFER_STATE_DIR, $XDG_STATE_HOME/coffer or
    /// ~/.local/state/coffer].
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Appliance images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Boot an image under QEMU and wait until its health endpoint answers.
    Run(RunArgs),
    /// Power VMs off cleanly (ACPI power button), killing them only after a timeout.
    Stop(StopArgs),
    /// List the VMs started by `coffer run`.
    Ps,
    /// Compute launch measurements offline, from image artifacts.
    #[command(subcommand)]
    Measure(MeasureCommand),
    /// Verify attestation evidence.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// The simulated secure processor, for development and CI (NOT AMD hardware).
    #[command(subcommand)]
    Sim(SimCommand),
    /// Deployment manifests.
    #[command(subcommand)]
    Deployment(DeploymentCommand),
    /// k-of-n recovery of the KMS root key: a recovery officer's side, offline.
    #[command(subcommand)]
    Recovery(recovery::RecoveryCommand),
    /// Audit logs: verify a downloaded log or proof bundle offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

#[derive(Subcommand)]
enum DeploymentCommand {
    /// Write a sim-platform deployment manifest: every role's committed pins, the simulated
    /// chip's TCB as floors, this machine's simulation root.
    Init(deployment::InitArgs),
}

#[derive(Subcommand)]
enum SimCommand {
    /// Sign a simulated SEV-SNP report for a built image, its measurement recomputed from the
    /// image's artifacts. Verifiers accept it only with --trust-simulation and a policy saying
    /// trust_root = "simulation".
    Report(sim::SimReportArgs),
    /// Serve one VM as its simulated secure processor (started by `coffer run --deployment`).
    #[command(hide = true)]
    Serve(sim::SimServeArgs),
}

#[derive(Subcommand)]
enum VerifyCommand {
    /// Verify an SEV-SNP attestation report: AMD chain, signature, certificate dates, chip ID and
    /// TCB against the certificate, and (with --policy) every policy check. Exit 0 accepted,
    /// 1 rejected, 2 unusable input.
    Report(verify::VerifyReportArgs),
    /// Verify Azure confidential-VM evidence (HCL report with its SEV-SNP report, vTPM quote):
    /// both halves must pass. Exit 0 accepted, 1 rejected, 2 unusable input.
    Azure(verify::VerifyAzureArgs),
    /// Verify a server's attestation endpoint: fresh nonce, evidence bound to the nonce and to
    /// the TLS key of this connection, checked against a deployment's pins. Exit 0 accepted,
    /// 1 refused, 2 unusable input.
    Endpoint(verify::VerifyEndpointArgs),
}

#[derive(Subcommand)]
enum MeasureCommand {
    /// SEV-SNP launch digest of a QEMU measured direct boot; a drop-in for `sev-snp-measure`
    /// (same flags, same output).
    Snp(measure::MeasureSnpArgs),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build a role's image (kernel, initramfs, cmdline, firmware, manifest.json), reproducibly.
    Build {
        /// kms, client or executor.
        role: String,
        /// Output directory [default: out/images/<role> in the checkout].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Use this spec instead of image/specs/<role>.toml.
        #[arg(long, value_name = "FILE")]
        spec: Option<PathBuf>,
        /// The Coffer checkout [default: the current directory or its nearest parent].
        #[arg(long, value_name = "DIR")]
        source: Option<PathBuf>,
    },
    /// Pin a built image's launch measurements: write its measurements.json as the incoming set
    /// of measurements/pins/<role>.json, keeping the outgoing set(s).
    Pin {
        /// kms, client or executor.
        role: String,
        /// The built image [default: out/images/<role> in the checkout].
        #[arg(long, value_name = "DIR")]
        image: Option<PathBuf>,
        /// How many older sets stay accepted (the outgoing release).
        #[arg(long, default_value_t = 1)]
        keep_previous: usize,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// An image directory made by `coffer image build`.
    image_dir: PathBuf,
    /// Return once the VM is healthy, leaving it running (stop it with `coffer stop`).
    #[arg(long)]
    detach: bool,
    /// VM name [default: the image's role].
    #[arg(long)]
    name: Option<String>,
    /// Accelerator: tcg works everywhere; kvm where /dev/kvm works (not nested here).
    #[arg(long, value_enum, default_value_t = AccelArg::Tcg)]
    accel: AccelArg,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Host port for a guest port, as NAME=PORT (e.g. health=18080); others are picked free.
    #[arg(long = "port", value_name = "NAME=PORT", value_parser = parse_port)]
    ports: Vec<(String, u16)>,
    /// Seconds to wait for the health endpoint.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Launch into this deployment (manifest from `coffer deployment init`): the manifest goes
    /// to the guest on a config disk and its SHA-256 into HOST_DATA; on the sim platform the
    /// simulated secure processor starts beside the VM.
    #[arg(long, value_name = "FILE")]
    deployment: Option<PathBuf>,
    /// The data disk, for an image that keeps state (kms) [default: disks/NAME.img in the
    /// state directory, kept across runs; created when missing].
    #[arg(long, value_name = "FILE")]
    data_disk: Option<PathBuf>,
    /// kms image on a blank data disk: join the KMS at this mesh address (HOST:PORT as the VM
    /// sees it) as a replica or upgraded image, instead of starting a new root key. The KMS
    /// there must find this image's measurement pinned for kms in the deployment.
    #[arg(long, value_name = "HOST:PORT", requires = "deployment")]
    kms_join: Option<String>,
    /// kms image: a peer KMS that witnesses this one's state versions (rollback defence), by
    /// the URL of its attestation endpoint as the VM sees it (https://10.0.2.2:PORT). Repeat
    /// for each peer. Peers that join later are learnt as they witness each other.
    #[arg(long = "kms-peer", value_name = "URL", requires = "deployment", value_parser = parse_witness_url)]
    kms_peers: Vec<String>,
    /// kms image of a deployment whose replicas share one store (`deployment init
    /// --kms-shared-store`): the PostgreSQL URL as the VM sees it
    /// (postgres://USER[:PASSWORD]@10.0.2.2:PORT/DB). Everything stored there is sealed.
    #[arg(long = "kms-store", value_name = "URL", requires = "deployment", value_parser = parse_store_url)]
    kms_store: Option<String>,
}

/// A shared-store URL: `postgres://` or `postgresql://`, short.
fn parse_store_url(url: &str) -> Result<String, String> {
    if (url.starts_with("postgres://") || url.starts_with("postgresql://")) && url.len() <= 512 {
        Ok(url.to_owned())
    } else {
        // Not echoed: it may carry a password.
        Err("expected postgres://USER@HOST:PORT/DB (at most 512 bytes)".into())
    }
}

/// A witness URL: `https://HOST:PORT`, no path.
fn parse_witness_url(url: &str) -> Result<String, String> {
    if coffer_kms::rollback::quorum::valid_url(url) {
        Ok(url.to_owned())
    } else {
        Err(format!(
            "expected https://HOST:PORT (the peer's attestation endpoint as the VM sees it), got {url:?}"
        ))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Tcg,
    Kvm,
}

#[derive(clap::Args)]
struct StopArgs {
    /// VMs to stop [default: every VM started by `coffer run`].
    names: Vec<String>,
    /// Seconds to wait for a clean power-off before killing.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn parse_port(text: &str) -> Result<(String, u16), String> {
    let (name, port) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not NAME=PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{port}' is not a port number"))?;
    if port == 0 {
        return Err("port 0 is not a port".into());
    }
    Ok((name.to_owned(), port))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("coffer: error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// 2 for input the user must fix; 1 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ImageError>(),
            Some(
                ImageError::SpecSyntax { .. }
                    | ImageError::SpecInvalid { .. }
                    | ImageError::InputMissing { .. }
                    | ImageError::InputMismatch { .. }
                    | ImageError::ModuleNotPinned { .. }
                    | ImageError::NoCheckout(_)
            )
        ) || matches!(
            cause.downcast_ref::<LaunchError>(),
            Some(
                LaunchError::NotAnImage { .. }
                    | LaunchError::ImageTampered { .. }
                    | LaunchError::PortInUse { .. }
                    | LaunchError::UnknownPort(_)
                    | LaunchError::NameTaken(_)
                    | LaunchError::NoSuchVm(_)
                    | LaunchError::Deployment(_)
            )
        ) || matches!(
            cause.downcast_ref::<coffer_mesh::MeshError>(),
            Some(
                coffer_mesh::MeshError::SimulationNotAllowed | coffer_mesh::MeshError::Manifest(_)
            )
        ) || cause.downcast_ref::<coffer_types::UnknownRole>().is_some()
            || cause
                .downcast_ref::<coffer_types::DeploymentError>()
                .is_some()
            || cause
                .downcast_ref::<coffer_kms::recovery::RecoveryError>()
                .is_some()
    });
    if bad_input {
        2
    } else {
        1
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let state_dir = cli.state_dir.unwrap_or_else(coffer_qemu::default_state_dir);
    match cli.command {
        // Verification has its own exit codes (0 accepted, 1 rejected, 2 unusable input) and
        // prints its own reasons.
        Command::Verify(VerifyCommand::Report(args)) => Ok(ExitCode::from(verify::run(&args)?)),
        Command::Verify(VerifyCommand::Azure(args)) => {
            Ok(ExitCode::from(verify::run_azure(&args)?))
        }
        Command::Verify(VerifyCommand::Endpoint(args)) => {
            Ok(ExitCode::from(verify::run_endpoint(&args)?))
        }
        Command::Audit(command) => Ok(ExitCode::from(audit::run(&command))),
        command => dispatch(command, state_dir).map(|()| ExitCode::SUCCESS),
    }
}

fn dispatch(command: Command, state_dir: PathBuf) -> anyhow::Result<()> {
    match command {
        Command::Image(ImageCommand::Build {
            role,
            out,
            spec,
            source,
        }) => {
            let role: Role = role.parse()?;
            let start = match source {
                Some(dir) => dir,
                None => std::env::current_dir().context("current directory")?,
            };
            let checkout = coffer_image::find_checkout(&start)?;
            let out_dir = out.unwrap_or_else(|| checkout.join("out/images").join(role.as_str()));
            let progress = Progress::new(6, role.as_str());
            let manifest = coffer_image::build_image(
                &BuildRequest {
                    checkout,
                    role,
                    spec,
                    out_dir: out_dir.clone(),
                },
                &progress,
            )?;
            println!("built {role} image in {}", out_dir.display());
            for output in &manifest.outputs {
                println!(
                    "  {:<18} {:>10} bytes  sha256:{}",
                    output.path, output.size, output.sha256
                );
            }
            Ok(())
        }
        Command::Image(ImageCommand::Pin {
            role,
            image,
            keep_previous,
        }) => {
            let role: Role = role.parse()?;
            let checkout = coffer_image::find_checkout(&std::env::current_dir()?)?;
            let image = image.unwrap_or_else(|| checkout.join("out/images").join(role.as_str()));
            let path = image.join(coffer_types::MEASUREMENTS_FILE);
            let bytes = std::fs::read(&path)
                .with_context(|| format!("{} (build the image first)", path.display()))?;
            let current: coffer_types::MeasurementSet =
                serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))?;
            if current.role != role {
                anyhow::bail!(
                    "{} holds {} measurements, not {role}",
                    path.display(),
                    current.role
                );
            }
            let pin_path = coffer_image::pins::pin_path(&checkout, role);
            let existing = coffer_image::pins::load(&pin_path)?;
            let pins = coffer_image::pins::bless(existing, current, keep_previous);
            coffer_image::pins::save(&pin_path, &pins)?;
            println!(
                "pinned {} launch digests of the {role} image in {} ({} set(s) accepted)",
                pins.sets.first().map(|s| s.snp.len()).unwrap_or(0),
                pin_path.display(),
                pins.sets.len()
            );
            Ok(())
        }
        Command::Run(args) => run_vm(args, state_dir),
        Command::Stop(args) => stop_vms(args, &state_dir),
        Command::Sim(SimCommand::Report(args)) => sim::run(&args, &state_dir),
        Command::Sim(SimCommand::Serve(args)) => sim::serve(&args, &state_dir),
        Command::Deployment(DeploymentCommand::Init(args)) => deployment::init(&args, &state_dir),
        Command::Recovery(command) => recovery::run(&command),
        Command::Measure(MeasureCommand::Snp(args)) => {
            println!("{}", measure::run(&args)?);
            Ok(())
        }
        Command::Verify(_) => anyhow::bail!("internal: `verify` is answered by run()"),
        Command::Audit(_) => anyhow::bail!("internal: `audit` is answered by run()"),
        Command::Ps => {
            for vm in coffer_qemu::state::list(&state_dir) {
                let state = if vm.is_running() { "running" } else { "exited" };
                println!(
                    "{:<12} {:<8} {:<8} {} {}",
                    vm.name,
                    vm.role,
                    state,
                    vm.health_url(),
                    vm.deployment_id
                        .as_deref()
                        .map(|id| format!("deployment={id}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

fn run_vm(args: RunArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    let options = LaunchOptions {
        image_dir: args.image_dir,
        name: args.name,
        accel: match args.accel {
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
        },
        memory_mib: args.memory,
        cpus: args.cpus,
        ports: args.ports,
        state_dir: state_dir.clone(),
        deployment: match &args.deployment {
            Some(path) => {
                let manifest = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let sim_dir = sim::default_sim_dir(&state_dir);
                sim::check_simulation_root(&manifest, &sim_dir)?;
                Some(coffer_qemu::DeploymentLaunch {
                    manifest,
                    sim: Some(coffer_qemu::SimProcess {
                        program: std::env::current_exe().context("the coffer binary")?,
                        sim_dir,
                    }),
                })
            }
            None => None,
        },
        data_disk: args.data_disk,
        kms_join: args.kms_join,
        kms_peers: args.kms_peers,
        kms_store: args.kms_store,
    };
    let vm = coffer_qemu::launch(&options)?;
    eprintln!(
        "coffer: started VM '{}' ({}), serial log {}; waiting for {}",
        vm.name,
        vm.role,
        vm.serial_log.display(),
        vm.health_url()
    );
    if let Err(err) = coffer_qemu::health::wait_healthy(&vm, Duration::from_secs(args.timeout)) {
        let _ = coffer_qemu::stop(&state_dir, &vm, Duration::from_secs(10));
        return Err(err.into());
    }
    println!("{} healthy: {}", vm.name, vm.health_url());
    for forward in &vm.forwards {
        println!(
            "  {:<8} guest :{:<5} -> 127.0.0.1:{}",
            forward.name, forward.guest, forward.host
        );
    }
    if args.detach {
        return Ok(());
    }
    eprintln!("coffer: press Ctrl-C to power the VM off");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let interrupted = runtime.block_on(async {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return true,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if !vm.is_running() {
                        return false;
                    }
                }
            }
        }
    });
    if interrupted {
        report_stop(
            &vm.name,
            coffer_qemu::stop(&state_dir, &vm, Duration::from_secs(60))?,
        );
    } else {
        eprintln!("coffer: VM '{}' powered off", vm.name);
    }
    Ok(())
}

fn stop_vms(args: StopArgs, state_dir: &std::path::Path) -> anyhow::Result<()> {
    let vms = if args.names.is_empty() {
        coffer_qemu::state::list(state_dir)
    } else {
        args.names
            .iter()
            .map(|name| {
                coffer_qemu::state::load(state_dir, name)
                    .ok_or_else(|| LaunchError::NoSuchVm(name.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    for vm in vms {
        report_stop(
            &vm.name,
            coffer_qemu::stop(state_dir, &vm, Duration::from_secs(args.timeout))?,
        );
    }
    Ok(())
}

fn report_stop(name: &str, outcome: StopOutcome) {
    match outcome {
        StopOutcome::PoweredOff => println!("{name}: powered off cleanly"),
        StopOutcome::Killed => println!("{name}: did not power off in time; killed"),
        StopOutcome::AlreadyStopped => println!("{name}: was not running"),
    }
}

/// The Coffer checkout around the current directory.
pub(crate) fn checkout() -> anyhow::Result<PathBuf> {
    Ok(coffer_image::find_checkout(&std::env::current_dir()?)?)
}
