//! Client addresses and IP allowlists.
//!
//! - Addresses parse strictly with the standard library's parsers: no leading zeros, hex or
//!   short IPv4 forms, no zone ids, one address (never a comma-separated list).
//! - Only IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is normalised to IPv4; `::a.b.c.d` stays IPv6.
//! - IPv4 and IPv6 are separate families: `::/0` admits no IPv4 client and vice versa.
//! - Allowlist entries are single addresses or CIDRs in network form; an entry with host bits
//!   set (`10.0.0.1/8`) is an error that suggests the network form, never silently fixed.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

/// The address of the caller, from `CF-Connecting-IP` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(IpAddr);

impl ClientIp {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim_matches([' ', '\t']);
        IpAddr::from_str(s).ok().map(|a| ClientIp(normalise(a)))
    }

    pub fn addr(self) -> IpAddr {
        self.0
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn normalise(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpError(pub String);

impl fmt::Display for IpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse_entry(raw: &str) -> Result<IpNet, IpError> {
    let entry = raw.trim();
    if entry.contains('%') {
        return Err(IpError(format!("{raw:?}: zone ids are not allowed")));
    }
    let net = match entry.split_once('/') {
        None => {
            let addr = IpAddr::from_str(entry)
                .map_err(|_| IpError(format!("{raw:?} is not an IP address or CIDR")))?;
            IpNet::from(normalise(addr))
        }
        Some((addr, len)) => {
            // Parse both halves strictly ourselves: no leading zeros anywhere.
            let bad = || IpError(format!("{raw:?} is not a valid CIDR"));
            let addr = IpAddr::from_str(addr).map_err(|_| bad())?;
            if len.is_empty()
                || (len.len() > 1 && len.starts_with('0'))
                || !len.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            let len = len.parse::<u8>().map_err(|_| bad())?;
            let net = IpNet::new(addr, len).map_err(|_| bad())?;
            if net.trunc() != net {
                return Err(IpError(format!(
                    "{raw:?} has host bits set; did you mean {}?",
                    net.trunc()
                )));
            }
            normalise_net(net)
        }
    };
    Ok(net)
}

/// `::ffff:10.0.0.0/104` is the IPv4 network `10.0.0.0/8`.
fn normalise_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let (Some(v4), true) = (v6.network().to_ipv4_mapped(), v6.prefix_len() >= 96)
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

/// A non-empty-or-empty list of networks. Empty means "no list": nothing to check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpAllowlist {
    nets: Vec<IpNet>,
}

impl IpAllowlist {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, (usize, IpError)> {
        let nets = entries
            .iter()
            .enumerate()
            .map(|(i, e)| parse_entry(e.as_ref()).map_err(|err| (i, err)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(IpAllowlist { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Does the list admit this caller? A list that applies and an unknown address: no.
    pub fn admits(&self, ip: Option<ClientIp>) -> bool {
        match ip {
            Some(ClientIp(addr)) => self.nets.iter().any(|n| n.contains(&addr)),
            None => false,
        }
    }

    /// Is this list within `outer`: every network it names is inside one of `outer`'s?
    pub fn within(&self, outer: &IpAllowlist) -> bool {
        outer.is_empty()
            || (!self.is_empty() && self.nets.iter().all(|n| outer.nets.iter().any(|o| o.contains(n))))
    }

    pub fn entries(&self) -> Vec<String> {
        self.nets.iter().map(canonical).collect()
    }
}

/// Single hosts are shown as addresses, networks as CIDRs.
fn canonical(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

impl Serialize for IpAllowlist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries().serialize(s)
    }
}

impl<'de> Deserialize<'de> for IpAllowlist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        IpAllowlist::parse(&v).map_err(|(_, e)| serde::de::Error::custom(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(e: &[&str]) -> IpAllowlist {
        IpAllowlist::parse(e).unwrap()
    }
    fn ip(s: &str) -> Option<ClientIp> {
        ClientIp::parse(s)
    }

    #[test]
    fn strict_client_addresses() {
        assert!(ip("203.0.113.7").is_some());
        assert!(ip(" 203.0.113.7\t").is_some());
        for bad in [
            "010.0.0.1",
            "10.1",
            "167772161",
            "0x0a.0.0.1",
            "fe80::1%eth0",
            "1.2.3.4, 5.6.7.8",
            "",
            "1.2.3.4:80",
        ] {
            assert!(ip(bad).is_none(), "{bad:?} must be invalid");
        }
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
        assert_ne!(ip("::10.0.0.1"), ip("10.0.0.1"), "IPv4-compatible stays IPv6");
    }

    #[test]
    fn allowlist_entries() {
        let l = list(&[
            "203.0.113.0/24",
            "2001:db8::/32",
            "198.51.100.7",
            "::ffff:192.0.2.0/120",
        ]);
        assert!(l.admits(ip("203.0.113.200")));
        assert!(l.admits(ip("198.51.100.7")));
        assert!(!l.admits(ip("198.51.100.8")));
        assert!(l.admits(ip("2001:db8:1::5")));
        assert!(
            l.admits(ip("192.0.2.9")),
            "mapped CIDR normalised to 192.0.2.0/24"
        );
        assert!(l.admits(ip("::ffff:203.0.113.1")));
        assert!(!l.admits(None));
        assert_eq!(
            l.entries(),
            vec!["203.0.113.0/24", "2001:db8::/32", "198.51.100.7", "192.0.2.0/24"]
        );
    }

    #[test]
    fn families_are_separate() {
        assert!(!list(&["::/0"]).admits(ip("10.0.0.1")));
        assert!(!list(&["0.0.0.0/0"]).admits(ip("2001:db8::1")));
        assert!(list(&["0.0.0.0/0"]).admits(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn invalid_entries_are_errors_not_fixups() {
        let err = IpAllowlist::parse(&["10.0.0.1/8"]).unwrap_err();
        assert!(err.1.0.contains("10.0.0.0/8"), "{}", err.1);
        for bad in [
            "10.0.0.0/33",
            "010.0.0.0/8",
            "fe80::1%eth0",
            "nope",
            "10.0.0.0/08",
            "10.1/16",
            "",
        ] {
            assert!(IpAllowlist::parse(&[bad]).is_err(), "{bad:?} must be invalid");
        }
        assert_eq!(IpAllowlist::parse(&["1.2.3.4", "bad"]).unwrap_err().0, 1);
    }

    #[test]
    fn within() {
        assert!(list(&["10.1.0.0/16"]).within(&list(&["10.0.0.0/8"])));
        assert!(!list(&["10.0.0.0/8"]).within(&list(&["10.1.0.0/16"])));
        assert!(!IpAllowlist::default().within(&list(&["10.0.0.0/8"])));
        assert!(IpAllowlist::default().within(&IpAllowlist::default()));
    }

    proptest! {
        #[test]
        fn a_network_admits_exactly_its_addresses(a in any::<u32>(), b in any::<u32>(), len in 0u8..=32) {
            let net = Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap().trunc();
            let l = list(&[&net.to_string()]);
            let addr = std::net::Ipv4Addr::from(b);
            prop_assert_eq!(l.admits(ip(&addr.to_string())), net.contains(&addr));
            // The mapped form of the same address gets the same answer.
            prop_assert_eq!(l.admits(ip(&format!("::ffff:{addr}"))), net.contains(&addr));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = ClientIp::parse(&s);
            let _ = IpAllowlist::parse(&[s]);
        }
    }
}
