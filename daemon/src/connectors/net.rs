//! The outbound network policy: which addresses actions may reach.

use std::net::{IpAddr, Ipv4Addr};

/// Whether outbound requests may reach loopback, private and link-local addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkPolicy {
    /// `MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS=true`: for local development and tests only.
    pub allow_private: bool,
}

impl NetworkPolicy {
    /// `Err` naming the kind of address when it may not be reached.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        match restricted_kind(ip) {
            None => Ok(()),
            Some(kind) => Err(format!(
                "{ip} is a {kind} address; requests to loopback, private and link-local addresses \
                 are refused (set MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS=true to allow them)"
            )),
        }
    }
}

/// Whether `host` matches an allowed-domains list: an entry is an exact host
/// (`api.example.com`) or `*.example.com`, which matches every subdomain of example.com but
/// not example.com itself. Case and a trailing dot are ignored.
pub fn domain_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    allowed.iter().any(|entry| {
        let entry = entry.trim_end_matches('.').to_ascii_lowercase();
        match entry.strip_prefix("*.") {
            Some(parent) => host.len() > parent.len() + 1 && host.ends_with(&format!(".{parent}")),
            None => host == entry,
        }
    })
}

/// The kind of a non-public address, or `None` for a public one.
pub fn restricted_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_kind(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (seg[0] & 0xfe00) == 0xfc00 {
                Some("private (unique local)")
            } else if (seg[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b {
                // NAT64 embeds an IPv4 address in the last 32 bits.
                let v4 = Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                v4_kind(v4)
            } else {
                None
            }
        }
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast or broadcast")
    } else if o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for (ip, restricted) in [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("0.0.0.0", true),
            ("224.0.0.1", true),
            ("8.8.8.8", false),
            ("::1", true),
            ("fd00::1", true),
            ("fe80::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:8.8.8.8", false),
            ("64:ff9b::a00:1", true),
            ("2606:4700::1111", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(restricted_kind(ip).is_some(), restricted, "{ip}");
        }
    }

    #[test]
    fn allowed_domains_match_exact_hosts_and_subdomains() {
        let list = vec!["api.example.com".to_owned(), "*.corp.example".to_owned()];
        assert!(domain_allowed("api.example.com", &list));
        assert!(domain_allowed("API.Example.com.", &list));
        assert!(!domain_allowed("example.com", &list));
        assert!(!domain_allowed("evil-api.example.com", &list));
        assert!(domain_allowed("a.corp.example", &list));
        assert!(domain_allowed("b.a.corp.example", &list));
        assert!(
            !domain_allowed("corp.example", &list),
            "the bare domain is not a subdomain"
        );
        assert!(!domain_allowed("xcorp.example", &list));
        assert!(!domain_allowed("anything", &[]));
    }

    #[test]
    fn policy_explains_refusals_and_can_allow() {
        let err = NetworkPolicy::default()
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(
            err.contains("link-local") && err.contains("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS"),
            "{err}"
        );
        assert!(
            NetworkPolicy {
                allow_private: true
            }
            .check("127.0.0.1".parse().unwrap())
            .is_ok()
        );
    }
}
