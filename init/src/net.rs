//! Network bring-up over rtnetlink: loopback, then the image's interface.
//!
//! Only what the image spec says is configured; nothing is learnt from the host except, under
//! QEMU user networking, the fixed addresses that QEMU documents (guest 10.0.2.15, host 10.0.2.2).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use coffer_types::NetworkConfig;
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tracing::info;

use crate::{dhcp, InitError};

/// How long to wait for a NIC driver to register its interface after the module loaded.
const LINK_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn configure(config: &NetworkConfig) -> Result<(), InitError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| net_err("tokio runtime", e))?;
    runtime.block_on(configure_async(config))
}

async fn configure_async(config: &NetworkConfig) -> Result<(), InitError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| net_err("netlink socket", e))?;
    tokio::spawn(connection);

    let lo = wait_for_link(&handle, "lo").await?;
    set_up(&handle, lo, "lo").await?;

    match config {
        NetworkConfig::None => info!("network: loopback only"),
        NetworkConfig::Static {
            interface,
            address,
            gateway,
        } => {
            let (ip, prefix) = parse_cidr(address)?;
            let gateway: Ipv4Addr = gateway.parse().map_err(|_| {
                InitError::NetworkConfig(format!("gateway '{gateway}' is not an IPv4 address"))
            })?;
            let index = wait_for_link(&handle, interface).await?;
            set_up(&handle, index, interface).await?;
            apply(&handle, index, ip, prefix, Some(gateway)).await?;
            info!(%interface, %address, %gateway, "network configured");
        }
        NetworkConfig::Dhcp { interface } => {
            let index = wait_for_link(&handle, interface).await?;
            set_up(&handle, index, interface).await?;
            let name = interface.clone();
            let lease = tokio::task::spawn_blocking(move || dhcp::acquire(&name))
                .await
                .map_err(|e| net_err("dhcp", e))??;
            apply(&handle, index, lease.address, lease.prefix, lease.router).await?;
            write_resolv_conf(&lease.dns);
            dhcp::keep(interface.clone(), lease.clone());
            info!(
                %interface,
                address = %format!("{}/{}", lease.address, lease.prefix),
                router = ?lease.router,
                server = %lease.server,
                lease_s = ?lease.lease_secs,
                "network configured by DHCP"
            );
        }
    }
    Ok(())
}

/// Adds the address (idempotently) and, with a gateway, the default route.
async fn apply(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<(), InitError> {
    match handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => {}
        // EEXIST: configured already (a second call); nothing to do.
        Err(rtnetlink::Error::NetlinkError(e)) if e.code.map(|c| -c.get()) == Some(17) => {}
        Err(e) => return Err(net_err("add address", e)),
    }
    if let Some(gateway) = gateway {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| net_err("add default route", e))?;
    }
    Ok(())
}

fn write_resolv_conf(servers: &[Ipv4Addr]) {
    let text: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    if let Err(e) = std::fs::write("/etc/resolv.conf", text) {
        tracing::warn!(error = %e, "cannot write /etc/resolv.conf");
    }
}

async fn wait_for_link(handle: &Handle, name: &str) -> Result<u32, InitError> {
    let started = Instant::now();
    loop {
        let mut links = handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(Some(link)) => return Ok(link.header.index),
            Ok(None) | Err(_) if started.elapsed() < LINK_WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(None) | Err(_) => {
                return Err(InitError::Network {
                    step: "find interface",
                    reason: format!(
                        "no interface named '{name}' after {}s (is its driver in the image's module list?)",
                        LINK_WAIT.as_secs()
                    ),
                })
            }
        }
    }
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), InitError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| InitError::Network {
            step: "set link up",
            reason: format!("{name}: {e}"),
        })
}

/// Parses `a.b.c.d/len`.
pub(crate) fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), InitError> {
    let bad =
        || InitError::NetworkConfig(format!("address '{text}' is not of the form a.b.c.d/len"));
    let (ip, len) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok((ip, len))
}

fn net_err(step: &'static str, e: impl std::fmt::Display) -> InitError {
    InitError::Network {
        step,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_address_and_prefix() {
        assert_eq!(
            parse_cidr("10.0.2.15/24").unwrap(),
            (Ipv4Addr::new(10, 0, 2, 15), 24)
        );
    }

    #[test]
    fn malformed_cidrs_are_rejected_with_the_text() {
        for bad in [
            "10.0.2.15",
            "10.0.2.15/33",
            "10.0.2/24",
            "x/24",
            "10.0.2.15/-1",
        ] {
            let err = parse_cidr(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
