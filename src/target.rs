//! Refuses non-public targets (loopback, private, link-local, ...) unless the
//! operator allows them. Checked on the resolved addresses, inside the HTTP
//! client's resolver, so a DNS name cannot smuggle an internal address past
//! the check (DNS rebinding); IP-literal URLs are checked before sending.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a target was refused; found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("refused target {host}: {reason}")]
pub struct RefusedTarget {
    pub host: String,
    pub reason: String,
}

/// A name that could not be resolved; found again in reqwest's error chain,
/// so that a DNS failure is told from a refused connection by its type.
#[derive(Debug, thiserror::Error)]
#[error("dns error: {host}: {source}")]
pub struct DnsFailure {
    pub host: String,
    pub source: std::io::Error,
}

/// True for addresses on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || ip.to_ipv4().is_some()) // IPv4-compatible, deprecated
}

/// Checks a literal IP host (the resolver is not consulted for those):
/// public, or every target allowed, or this exact address and port among
/// `allowed` (`http.allowed_targets`).
pub fn check_literal(
    url: &reqwest::Url,
    allow_private: bool,
    allowed: &[SocketAddr],
) -> Result<(), RefusedTarget> {
    if allow_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    let listed = url
        .port_or_known_default()
        .is_some_and(|port| allowed.contains(&SocketAddr::new(ip, port)));
    if is_public(ip) || listed {
        Ok(())
    } else {
        Err(RefusedTarget {
            host: ip.to_string(),
            reason: "not a public address (set http.allow_private_targets, or list it in http.allowed_targets, to allow)".into(),
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A resolver that drops non-public addresses, and fails when none is left.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let looked_up = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(Iterator::collect::<Vec<SocketAddr>>);
            let resolved = match looked_up {
                Ok(resolved) => resolved,
                Err(source) => return Err(Box::new(DnsFailure { host, source }) as BoxError),
            };
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() && !resolved.is_empty() {
                return Err(Box::new(RefusedTarget {
                    host,
                    reason: "resolves only to non-public addresses (set http.allow_private_targets to allow)".into(),
                }) as BoxError);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
    }

    #[test]
    fn literal_hosts_are_checked() {
        let url = reqwest::Url::parse("http://169.254.169.254/latest/meta-data").expect("url");
        assert!(check_literal(&url, false, &[]).is_err());
        assert!(check_literal(&url, true, &[]).is_ok());
        let url = reqwest::Url::parse("https://[::1]:8443/hook").expect("url");
        assert!(check_literal(&url, false, &[]).is_err());
        let url = reqwest::Url::parse("https://example.com/hook").expect("url");
        assert!(check_literal(&url, false, &[]).is_ok());
    }

    #[test]
    fn an_allowed_target_is_that_address_and_port_only() {
        let allowed = ["127.0.0.1:8080".parse().expect("addr")];
        let url = |u: &str| reqwest::Url::parse(u).expect("url");
        assert!(check_literal(&url("http://127.0.0.1:8080/hook"), false, &allowed).is_ok());
        assert!(check_literal(&url("http://127.0.0.1:8081/hook"), false, &allowed).is_err());
        assert!(check_literal(&url("http://127.0.0.2:8080/hook"), false, &allowed).is_err());
        assert!(check_literal(&url("http://127.0.0.1/hook"), false, &allowed).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        let guarded = GuardedResolver {
            allow_private: false,
        };
        let name: Name = "localhost".parse().expect("name");
        let err = match guarded.resolve(name).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        assert!(
            err.to_string().contains("refused target localhost"),
            "{err}"
        );
        let open = GuardedResolver {
            allow_private: true,
        };
        let name: Name = "localhost".parse().expect("name");
        assert!(open.resolve(name).await.is_ok());
    }
}
