//! Which addresses a foreign origin may resolve to: public ones, the
//! upstream's own, and the networks in `redirect_allow`; checked before a hop
//! and again by the foreign client's resolver.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::OnceCell;

/// Which addresses a foreign origin may resolve to.
pub(super) struct AddressPolicy {
    pub(super) allow: Vec<IpNet>,
    pub(super) home: Url,
    /// What the upstream's own host resolves to, looked up once.
    pub(super) home_addresses: OnceCell<Vec<IpAddr>>,
}

impl AddressPolicy {
    /// Whether `url`'s host has at least one permitted address; a name that
    /// does not resolve passes here and fails to connect.
    pub(super) async fn reachable(&self, url: &Url) -> bool {
        let port = url.port_or_known_default().unwrap_or(0);
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.permits(IpAddr::V4(ip)).await,
            Some(url::Host::Ipv6(ip)) => self.permits(IpAddr::V6(ip)).await,
            Some(url::Host::Domain(name)) => match tokio::net::lookup_host((name, port)).await {
                Ok(addrs) => {
                    for addr in addrs {
                        if self.permits(addr.ip()).await {
                            return true;
                        }
                    }
                    false
                }
                Err(_) => true,
            },
            None => false,
        }
    }

    async fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|n| n.contains(&ip)) || {
            let home = self.home_addresses().await;
            home.contains(&ip)
        }
    }

    async fn home_addresses(&self) -> &[IpAddr] {
        let found = self
            .home_addresses
            .get_or_try_init(|| async {
                let port = self.home.port_or_known_default().unwrap_or(0);
                let addrs: Vec<IpAddr> = match self.home.host() {
                    Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
                    Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
                    Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
                        .await
                        .map(|a| a.map(|s| s.ip()).collect())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                // A failed lookup is tried again next time, not remembered.
                if addrs.is_empty() { Err(()) } else { Ok(addrs) }
            })
            .await;
        found.map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The resolver of the foreign client: only permitted addresses are returned,
/// so no connection to a forbidden one is ever made.
pub(super) struct PolicyResolver(pub(super) Arc<AddressPolicy>);

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let mut permitted: Vec<SocketAddr> = Vec::new();
            for addr in found {
                if policy.permits(addr.ip()).await {
                    permitted.push(addr);
                }
            }
            if permitted.is_empty() {
                let refused: Box<dyn StdError + Send + Sync> = format!(
                    "{} resolves only to addresses the egress policy forbids",
                    name.as_str()
                )
                .into();
                return Err(refused);
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether `ip` is a public unicast address: not loopback, link-local
/// (metadata endpoints live there), private, shared (CGNAT), unspecified,
/// documentation, benchmarking, multicast or reserved. IPv6 forms that
/// embed an IPv4 address are judged by it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 192 && b == 0 && c == 0))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local, deprecated
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || s[0..6] == [0; 6]) // IPv4-compatible and other ::/96
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for public in ["8.8.8.8", "52.94.1.1", "2600:1f18::1", "2a00:1450::1"] {
            assert!(is_public(ip(public)), "{public}");
        }
        for forbidden in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "169.254.170.2",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.2",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::2",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip(forbidden)), "{forbidden}");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_forbidden_addresses() {
        let policy = |allow: Vec<IpNet>| {
            Arc::new(AddressPolicy {
                allow,
                home: url("http://127.0.0.2:5000"),
                home_addresses: OnceCell::new(),
            })
        };
        let name = || "localhost".parse::<Name>().unwrap();
        let refused = PolicyResolver(policy(Vec::new())).resolve(name()).await;
        assert!(refused.is_err(), "localhost is not the upstream's address");
        let allowed = PolicyResolver(policy(vec!["127.0.0.1/32".parse().unwrap()]))
            .resolve(name())
            .await
            .unwrap()
            .collect::<Vec<_>>();
        assert!(!allowed.is_empty());
        assert!(
            allowed.iter().all(|a| a.ip() == ip("127.0.0.1")),
            "only the allowed address: {allowed:?}"
        );
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }
}
