//! `coffer-hub`: the control plane as a host process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use coffer_hub::config::OidcIssuer;
use coffer_hub::{Hub, HubConfig};

/// The Coffer control plane: users, orgs, datasets, jobs, approvals, notifications, audit log.
#[derive(Parser, Debug)]
#[command(name = "coffer-hub", version)]
struct Args {
    /// The database: sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(long, default_value = "sqlite://hub.db")]
    database: String,
    /// Where the hub keeps its signing key.
    #[arg(long, default_value = "hub-state")]
    state_dir: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:8600")]
    listen: SocketAddr,
    /// The issuer name in the credentials the hub signs (the KMS's authz config names it).
    #[arg(long, default_value = "https://hub.coffer.local")]
    issuer: String,
    /// The deployment id: the audit log's origin is coffer/<deployment>/audit.
    #[arg(long, default_value = "dev")]
    deployment: String,
    /// A JSON file listing OIDC issuers: [{"issuer", "client_id", "jwks"}].
    #[arg(long)]
    oidc: Option<PathBuf>,
    /// The KMS appliance's endpoint (https://HOST:PORT): it co-signs the audit checkpoints.
    #[arg(long, requires = "deployment_manifest")]
    kms_endpoint: Option<String>,
    /// The deployment manifest whose pins the KMS must match.
    #[arg(long)]
    deployment_manifest: Option<PathBuf>,
    /// Accept a KMS on the simulated platform (development and CI only).
    #[arg(long)]
    allow_simulation: bool,
    /// Print the `kms.authz` document naming this hub as the KMS's control-plane issuer (its
    /// public JWKS; the key is created if missing), for `coffer deployment init --kms-authz`,
    /// and exit.
    #[arg(long)]
    print_kms_authz: bool,
    /// Create this deployment administrator if the hub has no users (password printed once).
    #[arg(long, default_value = "admin")]
    bootstrap_admin: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let oidc: Vec<OidcIssuer> = match &args.oidc {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => Vec::new(),
    };
    let kms = match (&args.kms_endpoint, &args.deployment_manifest) {
        (Some(endpoint), Some(path)) => Some(coffer_hub::config::KmsLink {
            endpoint: endpoint.clone(),
            manifest: std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            allow_simulation: args.allow_simulation,
        }),
        _ => None,
    };
    let config = HubConfig {
        kms,
        database_url: args.database,
        state_dir: args.state_dir,
        issuer: args.issuer,
        audit_origin: format!("coffer/{}/audit", args.deployment),
        oidc,
    };
    if args.print_kms_authz {
        let keys = coffer_hub::keys::HubKeys::load_or_create(
            &config.state_dir,
            &config.issuer,
            &config.audit_origin,
        )?;
        let authz = serde_json::json!({"issuers": [{
            "issuer": keys.issuer(), "kind": "control_plane", "jwks": keys.jwks(),
        }]});
        println!("{}", serde_json::to_string_pretty(&authz)?);
        return Ok(());
    }
    let hub = Hub::open(config).await?;
    if let Some(password) = coffer_hub::api::bootstrap_admin(&hub, &args.bootstrap_admin).await? {
        // Shown once, on the operator's terminal; never logged.
        println!(
            "coffer-hub: created administrator {:?} with password {}",
            args.bootstrap_admin,
            password.as_str()
        );
    }
    coffer_hub::spawn_workers(&hub);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(addr = %args.listen, issuer = %hub.keys.issuer(), "coffer-hub serving");
    coffer_hub::api::serve(hub, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
