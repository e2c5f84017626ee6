//! Addresses: canonical client IPs, block entries (IP or CIDR) and the client-IP rule.
//!
//! One canonical form everywhere (peers, `X-Forwarded-For` entries, block entries, records):
//! IPv4-mapped IPv6 becomes IPv4, IPv6 prints in RFC 5952 form (std's `Display`), and a
//! `/32` or `/128` network is the bare address. Pure code.

use std::net::IpAddr;

use ipnet::IpNet;

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) → IPv4; everything else unchanged.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A network with a canonical address (a mapped-IPv4 network becomes an IPv4 one).
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net)
            }
            _ => net,
        },
        v4 => v4,
    }
}

/// A block entry: one address or a network. Displays canonically (bare IP for a host route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockEntry(IpNet);

impl BlockEntry {
    /// Parses an IP or CIDR from an admin request. A CIDR with host bits set is refused
    /// (`10.0.0.1/8`): the operator probably meant something else, and guessing is unsafe.
    pub fn parse(s: &str) -> Result<BlockEntry, String> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(BlockEntry(IpNet::from(canonical_ip(ip))));
        }
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("{:?} is not an IP address or CIDR", short(s)))?;
        if net.addr() != net.network() {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}?)",
                IpNet::new(net.network(), net.prefix_len()).unwrap_or(net)
            ));
        }
        Ok(BlockEntry(canonical_net(net)))
    }

    pub fn from_ip(ip: IpAddr) -> BlockEntry {
        BlockEntry(IpNet::from(canonical_ip(ip)))
    }

    pub fn net(&self) -> IpNet {
        self.0
    }

    /// Whether this entry is a single address (as opposed to a wider network).
    pub fn is_single(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl std::fmt::Display for BlockEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

fn short(s: &str) -> String {
    crate::token::truncate_for_message(s)
}

/// The client IP of a request (SPEC §2): the TCP peer, unless the peer is a trusted proxy;
/// then the right-most `X-Forwarded-For` address that is not itself trusted (the left-most if
/// all are), where a malformed entry stops the walk at the last good address (or the peer).
/// `xff` yields the header values in order; each may hold a comma-separated list.
pub(crate) fn client_ip<'a>(
    peer: IpAddr,
    trusted: &[IpNet],
    xff: impl Iterator<Item = &'a [u8]>,
) -> IpAddr {
    let peer = canonical_ip(peer);
    if !is_trusted(trusted, peer) {
        return peer;
    }
    // Collect the entries so we can walk from the right; requests rarely carry many, and this
    // only runs for trusted peers.
    let mut entries: Vec<&[u8]> = Vec::new();
    for value in xff {
        entries.extend(value.split(|&b| b == b','));
    }
    let mut current = peer;
    for raw in entries.iter().rev() {
        let Some(ip) = parse_xff_entry(raw) else {
            // Malformed: stop at the last good address.
            return current;
        };
        current = ip;
        if !is_trusted(trusted, ip) {
            return ip;
        }
    }
    current
}

/// The client a forward-auth caller names (SPEC §9): the right-most `X-Forwarded-For` entry
/// that is not inside `trusted_hops` (the left-most if all are). A malformed entry stops the
/// walk at the last good address; `None` when there is no good one (no header, or a
/// malformed right-most entry).
/// `xff` yields the header values in order; the walk needs no allocation.
pub(crate) fn forwarded_client<'a>(
    trusted_hops: &[IpNet],
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> Option<IpAddr> {
    let mut current = None;
    for value in xff.rev() {
        for raw in value.split(|&b| b == b',').rev() {
            let Some(ip) = parse_xff_entry(raw) else {
                return current;
            };
            current = Some(ip);
            if !is_trusted(trusted_hops, ip) {
                return current;
            }
        }
    }
    current
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// One `X-Forwarded-For` entry: an IP, optionally with surrounding spaces. Ports and
/// brackets are not part of the XFF convention and are refused.
fn parse_xff_entry(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    s.parse::<IpAddr>().ok().map(canonical_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_auth_client_is_the_right_most_entry_not_a_trusted_hop() {
        let hops: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let walk = |hops: &[IpNet], values: &[&str]| {
            forwarded_client(hops, values.iter().map(|v| v.as_bytes()))
        };
        // The entry the calling proxy appended wins over what the client put before it.
        assert_eq!(walk(&[], &["6.6.6.6, 1.2.3.4"]), Some(ip("1.2.3.4")));
        assert_eq!(walk(&[], &["6.6.6.6", "1.2.3.4"]), Some(ip("1.2.3.4")));
        assert_eq!(
            walk(&hops, &["6.6.6.6, 1.2.3.4, 10.1.1.1"]),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(walk(&hops, &["10.2.2.2, 10.1.1.1"]), Some(ip("10.2.2.2")));
        assert_eq!(walk(&hops, &["junk, 10.1.1.1"]), Some(ip("10.1.1.1")));
        assert_eq!(walk(&[], &["::ffff:1.2.3.4"]), Some(ip("1.2.3.4")));
        assert_eq!(walk(&[], &["1.2.3.4, junk"]), None);
        assert_eq!(walk(&[], &[""]), None);
        assert_eq!(walk(&[], &[]), None);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_ip(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(canonical_ip(ip("2001:db8::1")), ip("2001:db8::1"));
        assert_eq!(
            BlockEntry::parse("10.0.0.1").unwrap().to_string(),
            "10.0.0.1"
        );
        assert_eq!(
            BlockEntry::parse("10.0.0.1/32").unwrap().to_string(),
            "10.0.0.1"
        );
        assert_eq!(
            BlockEntry::parse("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            BlockEntry::parse("2001:0DB8:0000:0000:0000:0000:0000:0001")
                .unwrap()
                .to_string(),
            "2001:db8::1"
        );
        assert_eq!(
            BlockEntry::parse("2001:db8::1/128").unwrap().to_string(),
            "2001:db8::1"
        );
        assert_eq!(
            BlockEntry::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            BlockEntry::parse("::ffff:10.0.0.1").unwrap().to_string(),
            "10.0.0.1"
        );
        assert_eq!(
            BlockEntry::parse("::ffff:10.0.0.0/104")
                .unwrap()
                .to_string(),
            "10.0.0.0/8"
        );
        assert!(BlockEntry::parse("10.0.0.1/8").is_err());
        assert!(BlockEntry::parse("10.0.0.0/33").is_err());
        assert!(BlockEntry::parse("nope").is_err());
        assert!(BlockEntry::parse("").is_err());
    }

    #[test]
    fn cidr_contains() {
        let e = BlockEntry::parse("10.0.0.0/8").unwrap();
        assert!(e.contains(ip("10.200.0.1")));
        assert!(!e.contains(ip("11.0.0.1")));
        assert!(!e.is_single());
        assert!(BlockEntry::parse("10.0.0.1").unwrap().is_single());
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_headers() {
        let xff = [b"1.2.3.4".as_slice()];
        assert_eq!(
            client_ip(ip("9.9.9.9"), &[], xff.into_iter()),
            ip("9.9.9.9")
        );
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("9.9.9.9"), &trusted, xff.into_iter()),
            ip("9.9.9.9")
        );
        assert_eq!(
            client_ip(ip("::ffff:9.9.9.9"), &[], std::iter::empty()),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn trusted_peer_walks_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = [b"6.6.6.6, 1.2.3.4, 10.0.0.2".as_slice()];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, h.into_iter()),
            ip("1.2.3.4")
        );
        // Several header lines are one list.
        let h = [b"6.6.6.6".as_slice(), b"1.2.3.4".as_slice()];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, h.into_iter()),
            ip("1.2.3.4")
        );
        // All trusted: the left-most.
        let h = [b"10.0.0.9, 10.0.0.8".as_slice()];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, h.into_iter()),
            ip("10.0.0.9")
        );
        // No header: the peer.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, std::iter::empty()),
            ip("10.0.0.1")
        );
        // Malformed entry stops at the last good address.
        let h = [b"1.2.3.4, garbage, 10.0.0.3".as_slice()];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, h.into_iter()),
            ip("10.0.0.3")
        );
        let h = [b"1.2.3.4, garbage".as_slice()];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, h.into_iter()),
            ip("10.0.0.1")
        );
        // Mapped addresses in the header are canonicalised.
        let h = [b"::ffff:1.2.3.4".as_slice()];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, h.into_iter()),
            ip("1.2.3.4")
        );
    }
}
