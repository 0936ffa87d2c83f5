//! The outbound network policy: which addresses actions may reach.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
                "{ip} is a {kind} address; only global unicast addresses may be reached, not \
                 loopback, private, link-local or reserved ones (set \
                 MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS=true to allow them)"
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

/// The kind of an address that is not global unicast, or `None` for one that is: only
/// those may be reached (unless private networks are allowed). Addresses that embed an IPv4
/// address (IPv4-mapped, NAT64) are judged by it; every IPv6 address outside 2000::/3, and
/// the special ranges inside it, are refused.
pub fn restricted_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v6_kind(v6: Ipv6Addr) -> Option<&'static str> {
    let seg = v6.segments();
    let embedded = || {
        Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        )
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    if v6.is_loopback() {
        return Some("loopback");
    }
    if v6.is_unspecified() {
        return Some("unspecified");
    }
    // 64:ff9b::/96, NAT64: the embedded IPv4 address is the one reached.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_kind(embedded());
    }
    let prefix = |bits: u32, value: u128| (u128::from(v6) >> (128 - bits)) == value >> (128 - bits);
    let ranges: &[(u32, u128, &'static str)] = &[
        (96, 0, "IPv4-compatible (deprecated)"),
        (48, 0x0064_ff9b_0001 << 80, "local-use NAT64"),
        (64, 0x0100 << 112, "discard-only"),
        (32, 0x2001_0db8 << 96, "documentation"),
        (
            23,
            0x2001 << 112,
            "IETF protocol assignment (Teredo, benchmarking, ORCHID)",
        ),
        (16, 0x2002 << 112, "6to4"),
        (20, 0x3fff << 112, "documentation"),
        (16, 0x5f00 << 112, "SRv6"),
        (7, 0xfc00 << 112, "private (unique local)"),
        (10, 0xfe80 << 112, "link-local"),
        (10, 0xfec0 << 112, "site-local (deprecated)"),
        (8, 0xff00 << 112, "multicast"),
    ];
    if let Some((_, _, kind)) = ranges.iter().find(|(bits, value, _)| prefix(*bits, *value)) {
        return Some(kind);
    }
    // Global unicast is 2000::/3; the rest is reserved.
    if seg[0] & 0xe000 != 0x2000 {
        return Some("reserved");
    }
    None
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    let ranges: &[(u32, u32, &'static str)] = &[
        (8, 0x0000_0000, "unspecified (this network)"),
        (8, 0x0a00_0000, "private"),
        (10, 0x6440_0000, "shared (carrier-grade NAT)"),
        (8, 0x7f00_0000, "loopback"),
        (16, 0xa9fe_0000, "link-local"),
        (12, 0xac10_0000, "private"),
        (24, 0xc000_0000, "IETF protocol assignment"),
        (24, 0xc000_0200, "documentation (TEST-NET-1)"),
        (24, 0xc058_6300, "6to4 relay"),
        (16, 0xc0a8_0000, "private"),
        (15, 0xc612_0000, "benchmarking"),
        (24, 0xc633_6400, "documentation (TEST-NET-2)"),
        (24, 0xcb00_7100, "documentation (TEST-NET-3)"),
        (4, 0xe000_0000, "multicast"),
        (4, 0xf000_0000, "reserved or broadcast"),
    ];
    ranges
        .iter()
        .find(|(len, net, _)| bits >> (32 - len) == net >> (32 - len))
        .map(|(_, _, kind)| *kind)
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
            ("64:ff9b::808:808", false),
            ("2606:4700::1111", false),
            ("2a00:1450:4001::200e", false),
            // Ranges the guard let through before.
            ("::7f00:1", true),
            ("::a00:1", true),
            ("2002:7f00:1::", true),
            ("2002:808:808::1", true),
            ("64:ff9b:1::a00:1", true),
            ("fec0::1", true),
            ("192.0.0.1", true),
            ("192.0.0.170", true),
            ("198.18.0.1", true),
            ("198.19.255.255", true),
            ("198.20.0.1", false),
            ("192.0.2.1", true),
            ("198.51.100.7", true),
            ("203.0.113.9", true),
            ("192.88.99.1", true),
            ("255.255.255.255", true),
            ("2001:db8::1", true),
            ("2001::1", true),
            ("2001:2::1", true),
            ("3fff::1", true),
            ("100::1", true),
            ("5f00::1", true),
            ("4000::1", true),
            ("ff02::1", true),
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
