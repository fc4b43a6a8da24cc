//! A DHCPv4 client (RFC 2131) for clouds: DISCOVER, OFFER, REQUEST, ACK on one interface.
//!
//! Messages are encoded and decoded by `dhcproto`; the exchange itself is here because it is a
//! few lines and no maintained crate offers a small blocking client fit for PID 1. Requests set
//! the BROADCAST flag, so servers answer to 255.255.255.255 and a socket bound to the interface
//! (SO_BINDTODEVICE) receives them before the interface has an address.
//!
//! Nothing in a lease is trusted beyond reachability: the address, router and DNS servers only
//! decide where packets go, and every peer is authenticated later by attested TLS.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

use crate::InitError;

/// What the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: Option<u32>,
}

/// Give up after this long: a cloud VM without network cannot serve anyway (fail-stop).
const TOTAL: Duration = Duration::from_secs(60);

pub(crate) fn acquire(interface: &str) -> Result<Lease, InitError> {
    let mac = read_mac(interface)?;
    let socket = bound_socket(interface)?;
    let xid = u32::from_be_bytes(random4()?);
    let started = Instant::now();
    let mut wait = Duration::from_secs(1);
    loop {
        if started.elapsed() > TOTAL {
            return Err(dhcp_err(format!(
                "no lease on {interface} after {}s",
                TOTAL.as_secs()
            )));
        }
        send(
            &socket,
            &request(
                xid,
                &mac,
                MessageType::Discover,
                None,
                Ipv4Addr::UNSPECIFIED,
            ),
        )?;
        let Some(offer) = receive(&socket, xid, MessageType::Offer, wait)? else {
            wait = (wait * 2).min(Duration::from_secs(8));
            continue;
        };
        let server = server_id(&offer)?;
        send(
            &socket,
            &request(
                xid,
                &mac,
                MessageType::Request,
                Some((offer.yiaddr(), server)),
                Ipv4Addr::UNSPECIFIED,
            ),
        )?;
        match receive(&socket, xid, MessageType::Ack, wait)? {
            Some(ack) => return lease_from(&ack),
            None => continue, // NAK or silence: start over
        }
    }
}

/// A client message. `selected` (offered address, server) for a REQUEST after an OFFER;
/// `ciaddr` is our current address when renewing (RFC 2131 section 4.3.2), else unspecified.
/// Keeps a lease alive for as long as the appliance runs, on a thread of its own.
///
/// At T1 (half the lease) and then every minute it asks for the same address again (REQUEST
/// with `ciaddr`, broadcast, so it also works when the server changed). An ACK for the same
/// address extends the lease; NAKs and silence are retried until the lease runs out. An ACK for
/// another address, or the lease running out, mean the appliance cannot keep its address: it
/// asks the init to shut down (SIGTERM to PID 1), which stops the services and powers off
/// (fail-stop; the cloud restarts the VM).
pub(crate) fn keep(interface: String, lease: Lease) {
    let spawned = std::thread::Builder::new()
        .name("dhcp-renew".into())
        .spawn(move || {
            let reason = match renew_forever(&interface, lease) {
                Ok(()) => return, // infinite lease: nothing to renew
                Err(e) => e.to_string(),
            };
            tracing::error!(%interface, %reason, "DHCP lease lost; asking the init to shut down");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(1),
                nix::sys::signal::Signal::SIGTERM,
            );
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the DHCP renewal thread");
    }
}

/// When to start renewing a lease of `secs` seconds, and when it runs out; `None` for a lease
/// that never runs out (no lease time, or 0xffffffff as RFC 2131 defines "infinity").
pub(crate) fn renewal_plan(secs: Option<u32>) -> Option<(Duration, Duration)> {
    let secs = secs.filter(|s| *s != u32::MAX)?;
    let expiry = Duration::from_secs(u64::from(secs));
    Some((expiry / 2, expiry))
}

fn renew_forever(interface: &str, mut lease: Lease) -> Result<(), InitError> {
    let mac = read_mac(interface)?;
    let socket = bound_socket(interface)?;
    loop {
        let Some((t1, expiry)) = renewal_plan(lease.lease_secs) else {
            return Ok(());
        };
        let granted = Instant::now();
        std::thread::sleep(t1);
        let xid = u32::from_be_bytes(random4()?);
        lease = loop {
            if granted.elapsed() >= expiry {
                return Err(dhcp_err(format!("lease of {} expired", lease.address)));
            }
            let renew = request(xid, &mac, MessageType::Request, None, lease.address);
            send(&socket, &renew)?;
            let wait = Duration::from_secs(60).min(expiry.saturating_sub(granted.elapsed()));
            match receive(&socket, xid, MessageType::Ack, wait)? {
                Some(ack) => {
                    let renewed = lease_from(&ack)?;
                    if renewed.address != lease.address {
                        return Err(dhcp_err(format!(
                            "server moved us from {} to {}",
                            lease.address, renewed.address
                        )));
                    }
                    tracing::info!(%interface, address = %renewed.address, lease_s = ?renewed.lease_secs, "DHCP lease renewed");
                    break renewed;
                }
                None => continue,
            }
        };
    }
}

fn request(
    xid: u32,
    mac: &[u8; 6],
    kind: MessageType,
    selected: Option<(Ipv4Addr, Ipv4Addr)>,
    ciaddr: Ipv4Addr,
) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut message = Message::new_with_id(xid, ciaddr, unspecified, unspecified, unspecified, mac);
    message.set_flags(Flags::default().set_broadcast());
    let options = message.opts_mut();
    options.insert(DhcpOption::MessageType(kind));
    options.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
    ]));
    if let Some((address, server)) = selected {
        options.insert(DhcpOption::RequestedIpAddress(address));
        options.insert(DhcpOption::ServerIdentifier(server));
    }
    message
}

fn send(socket: &UdpSocket, message: &Message) -> Result<(), InitError> {
    let bytes = message
        .to_vec()
        .map_err(|e| dhcp_err(format!("encode: {e}")))?;
    socket
        .send_to(&bytes, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
        .map_err(|e| dhcp_err(format!("send: {e}")))?;
    Ok(())
}

/// Waits up to `wait` for a reply of `kind` to `xid`; `None` on timeout or a NAK.
fn receive(
    socket: &UdpSocket,
    xid: u32,
    kind: MessageType,
    wait: Duration,
) -> Result<Option<Message>, InitError> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| dhcp_err(e.to_string()))?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(dhcp_err(format!("receive: {e}"))),
        };
        // Anything malformed or meant for another client is ignored, not fatal.
        let Ok(message) = Message::from_bytes(&buf[..n]) else {
            continue;
        };
        if message.xid() != xid || message.opcode() != Opcode::BootReply {
            continue;
        }
        match message.opts().msg_type() {
            Some(t) if t == kind => return Ok(Some(message)),
            Some(MessageType::Nak) => return Ok(None),
            _ => continue,
        }
    }
}

fn server_id(message: &Message) -> Result<Ipv4Addr, InitError> {
    match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Ok(*ip),
        _ => Err(dhcp_err("offer without a server identifier".into())),
    }
}

pub(crate) fn lease_from(ack: &Message) -> Result<Lease, InitError> {
    let options = ack.opts();
    let mask = match options.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => *mask,
        _ => return Err(dhcp_err("lease without a subnet mask".into())),
    };
    let bits = u32::from(mask);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return Err(dhcp_err(format!("subnet mask {mask} is not contiguous")));
    }
    let router = match options.get(OptionCode::Router) {
        Some(DhcpOption::Router(routers)) => routers.first().copied(),
        _ => None,
    };
    let dns = match options.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(servers)) => servers.clone(),
        _ => Vec::new(),
    };
    let lease_secs = match options.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(secs)) => Some(*secs),
        _ => None,
    };
    Ok(Lease {
        address: ack.yiaddr(),
        prefix: bits.leading_ones() as u8,
        router,
        dns,
        server: server_id(ack)?,
        lease_secs,
    })
}

fn bound_socket(interface: &str) -> Result<UdpSocket, InitError> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| dhcp_err(format!("socket: {e}")))?;
    socket::setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(interface),
    )
    .map_err(|e| dhcp_err(format!("bind to {interface}: {e}")))?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true)
        .map_err(|e| dhcp_err(format!("SO_BROADCAST: {e}")))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
        .map_err(|e| dhcp_err(format!("SO_REUSEADDR: {e}")))?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(0, 0, 0, 0, 68),
    )
    .map_err(|e| dhcp_err(format!("bind port 68: {e}")))?;
    Ok(UdpSocket::from(fd))
}

fn read_mac(interface: &str) -> Result<[u8; 6], InitError> {
    let path = format!("/sys/class/net/{interface}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| dhcp_err(format!("{path}: {e}")))?;
    parse_mac(text.trim())
        .ok_or_else(|| dhcp_err(format!("{path}: '{}' is not a MAC address", text.trim())))
}

pub(crate) fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A transaction id need not be secret, only unlikely to collide; the CRNG is seeded by now.
fn random4() -> Result<[u8; 4], InitError> {
    let mut bytes = [0u8; 4];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(InitError::Rng)?,
        &mut bytes,
    )
    .map_err(InitError::Rng)?;
    Ok(bytes)
}

fn dhcp_err(reason: String) -> InitError {
    InitError::Network {
        step: "dhcp",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(mask: [u8; 4]) -> Message {
        let mut message = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 1, 0, 4),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        message.set_opcode(Opcode::BootReply);
        let options = message.opts_mut();
        options.insert(DhcpOption::MessageType(MessageType::Ack));
        options.insert(DhcpOption::SubnetMask(mask.into()));
        options.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 1, 0, 1)]));
        options.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(
            168, 63, 129, 16,
        )));
        options.insert(DhcpOption::AddressLeaseTime(3600));
        message
    }

    #[test]
    fn a_lease_is_read_from_an_ack() {
        let lease = lease_from(&ack([255, 255, 255, 0])).unwrap();
        assert_eq!(
            lease,
            Lease {
                address: Ipv4Addr::new(10, 1, 0, 4),
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 1, 0, 1)),
                dns: vec![],
                server: Ipv4Addr::new(168, 63, 129, 16),
                lease_secs: Some(3600),
            }
        );
    }

    #[test]
    fn a_non_contiguous_mask_is_refused() {
        let err = lease_from(&ack([255, 0, 255, 0])).unwrap_err().to_string();
        assert!(err.contains("not contiguous"), "{err}");
    }

    #[test]
    fn renewal_starts_at_half_the_lease_and_infinity_is_never_renewed() {
        assert_eq!(
            renewal_plan(Some(3600)),
            Some((Duration::from_secs(1800), Duration::from_secs(3600)))
        );
        assert_eq!(renewal_plan(Some(u32::MAX)), None);
        assert_eq!(renewal_plan(None), None);
    }

    #[test]
    fn a_renewal_carries_our_address_and_no_server_choice() {
        let ours = Ipv4Addr::new(10, 1, 0, 4);
        let message = request(9, &[2, 0, 0, 0, 0, 1], MessageType::Request, None, ours);
        assert_eq!(message.ciaddr(), ours);
        assert!(message.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(message.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert_eq!(message.opts().msg_type(), Some(MessageType::Request));
    }

    #[test]
    fn mac_addresses_parse_strictly() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
    }
}
