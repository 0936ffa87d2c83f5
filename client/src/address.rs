//! Daemon addresses: `host:port`, `http://host:port` or `https://host:port`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::Error;

/// The address mantlectl and the library use when none is given.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8080";

/// A parsed daemon address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Host name or IP address; IPv6 addresses without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// True for `https://` addresses: TLS with the operating system's root certificates.
    pub tls: bool,
}

impl Address {
    /// Parses `host:port`, `http://host:port` or `https://host:port`.
    ///
    /// IPv6 hosts are written in brackets (`[::1]:8080`). `http://` and `https://`
    /// addresses without a port use 80 and 443; a bare `host:port` must name its port.
    /// A trailing `/` is accepted; any other path, query, or user info is refused.
    pub fn parse(input: &str) -> Result<Address, Error> {
        let invalid = |reason: &str| Error::InvalidAddress {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let raw = input.trim();
        if raw.is_empty() {
            return Err(invalid("must not be empty"));
        }
        let (scheme, rest) = match raw.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
            None => (None, raw),
        };
        let tls = match scheme.as_deref() {
            None | Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(invalid("unsupported scheme (use http:// or https://)")),
        };
        let authority = if scheme.is_some() {
            rest.strip_suffix('/').unwrap_or(rest)
        } else {
            rest
        };
        if authority.contains(['/', '?', '#']) {
            return Err(invalid("must not contain a path"));
        }
        if authority.contains('@') {
            return Err(invalid("must not contain user information"));
        }
        if authority.is_empty() {
            return Err(invalid("has no host"));
        }

        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unterminated '[' in IPv6 address"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid("invalid IPv6 address in brackets"));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid("expected ':' after ']'"))?,
                ),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(invalid("IPv6 addresses must be written in brackets"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("has no host"));
        }
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(invalid("port must be a number from 1 to 65535")),
                Ok(p) => p,
            },
            None => match scheme.as_deref() {
                Some("https") => 443,
                Some(_) => 80,
                None => return Err(invalid("needs a port (host:port)")),
            },
        };
        Ok(Address {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// The URI tonic dials, for example `http://127.0.0.1:8080` or `https://[::1]:443`.
    pub fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// `host:port`, with IPv6 hosts in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// True when the host is this machine: `localhost`, 127.0.0.0/8 or `::1`.
    pub fn is_local(&self) -> bool {
        is_local_host(&self.host)
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// True for `localhost` (any case, optional trailing dot), addresses in 127.0.0.0/8, `::1`
/// and IPv4-mapped loopback addresses (`::ffff:127.0.0.1`). Brackets are ignored.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(v4) => v4.is_loopback(),
            None => ip.is_loopback(),
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> (String, u16, bool) {
        let a = Address::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (a.host, a.port, a.tls)
    }

    fn rejected(s: &str) -> String {
        match Address::parse(s) {
            Ok(a) => panic!("{s} parsed as {a:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_bare_host_port() {
        assert_eq!(parsed("127.0.0.1:8080"), ("127.0.0.1".into(), 8080, false));
        assert_eq!(parsed("localhost:9"), ("localhost".into(), 9, false));
        assert_eq!(
            parsed(" example.com:443 "),
            ("example.com".into(), 443, false)
        );
    }

    #[test]
    fn parses_schemes_and_default_ports() {
        assert_eq!(parsed("http://h:1"), ("h".into(), 1, false));
        assert_eq!(parsed("https://h:8443"), ("h".into(), 8443, true));
        assert_eq!(parsed("HTTPS://h"), ("h".into(), 443, true));
        assert_eq!(parsed("http://h/"), ("h".into(), 80, false));
    }

    #[test]
    fn parses_ipv6_in_brackets() {
        assert_eq!(parsed("[::1]:8080"), ("::1".into(), 8080, false));
        assert_eq!(
            parsed("https://[2001:db8::1]"),
            ("2001:db8::1".into(), 443, true)
        );
        let a = Address::parse("[::1]:8080").unwrap();
        assert_eq!(a.uri(), "http://[::1]:8080");
        assert_eq!(a.authority(), "[::1]:8080");
    }

    #[test]
    fn rejects_malformed_addresses() {
        assert!(rejected("").contains("must not be empty"));
        assert!(rejected("localhost").contains("needs a port"));
        assert!(rejected("ftp://h:1").contains("unsupported scheme"));
        assert!(rejected("http://h:1/api").contains("path"));
        assert!(rejected("h:0").contains("port"));
        assert!(rejected("h:65536").contains("port"));
        assert!(rejected("h:abc").contains("port"));
        assert!(rejected("::1:8080").contains("brackets"));
        assert!(rejected("[::1:8080").contains("unterminated"));
        assert!(rejected("[nothost]:1").contains("IPv6"));
        assert!(rejected("http://user@h:1").contains("user"));
        assert!(rejected(":8080").contains("no host"));
        assert!(rejected("http://").contains("no host"));
    }

    #[test]
    fn error_message_quotes_the_input() {
        assert_eq!(
            rejected("localhost"),
            "invalid address \"localhost\": needs a port (host:port)"
        );
    }

    #[test]
    fn uri_keeps_scheme() {
        assert_eq!(
            Address::parse("127.0.0.1:8080").unwrap().uri(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            Address::parse("https://api.example.com").unwrap().uri(),
            "https://api.example.com:443"
        );
    }

    #[test]
    fn detects_local_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3",
            "127.255.255.255",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_local_host(host), "{host} should be local");
        }
        for host in [
            "example.com",
            "localhost.example.com",
            "notlocalhost",
            "128.0.0.1",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "::2",
            "::ffff:10.0.0.1",
            "",
        ] {
            assert!(!is_local_host(host), "{host} should not be local");
        }
    }

    #[test]
    fn address_is_local_uses_host() {
        assert!(Address::parse("https://localhost:1").unwrap().is_local());
        assert!(!Address::parse("mantle.internal:8080").unwrap().is_local());
    }
}
