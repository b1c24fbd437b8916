//! The caller's address behind proxies. A load balancer or ingress makes every call come from its
//! own address; when the connection's peer is one of `server.trusted_proxies`, the caller is the
//! right-most address of `Forwarded` (or else `X-Forwarded-For`) that is not itself a trusted
//! proxy, as nginx's real_ip and Envoy's trusted hops read it. From any other peer those headers
//! are ignored: a caller cannot choose the address the audit log and the throttle see.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// A `server.trusted_proxies` entry that is neither an address nor a CIDR.
#[derive(Debug, thiserror::Error)]
#[error(
    "server.trusted_proxies: {0:?} is neither an address nor a CIDR (e.g. \"10.0.0.0/8\" or \
     \"192.0.2.7\")"
)]
pub struct NotAProxy(pub String);

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Default, Clone)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From `server.trusted_proxies`: CIDRs or single addresses; the problem of the first that is
    /// neither.
    pub fn parse(entries: &[String]) -> Result<Self, NotAProxy> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| NotAProxy(entry.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The caller's address: the peer's, or when the peer is a trusted proxy, the right-most
    /// forwarded address that is not a trusted proxy (port 0: the headers carry none reliably).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if self.0.is_empty() || !self.trusts(peer.ip()) {
            return peer;
        }
        let hops = forwarded_hops(headers);
        hops.iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .map_or(peer, |ip| SocketAddr::new(*ip, 0))
    }
}

/// The addresses a request passed through, first hop first: `Forwarded`'s `for=` values when that
/// header is present, else `X-Forwarded-For`. Unparseable entries (`unknown`, obfuscated names)
/// end the list there: nothing left of them can be attributed.
fn forwarded_hops(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let forwarded = values("forwarded");
    let entries: Vec<String> = if forwarded.is_empty() {
        values("x-forwarded-for")
    } else {
        forwarded
            .iter()
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| value.trim().trim_matches('"').to_string())
                })
            })
            .collect()
    };
    let mut hops = Vec::new();
    for entry in entries.iter().rev() {
        match parse_hop(entry) {
            Some(ip) => hops.push(ip),
            None => break,
        }
    }
    hops.reverse();
    hops
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711` or `2001:db8::1`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_right_most_untrusted_hop_behind_a_trusted_peer() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.9".into()]).unwrap();
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let from = |pairs: &[(&str, &str)]| trusted.client(peer, &headers(pairs)).ip();
        // A caller's own X-Forwarded-For entry is left of what the proxies appended.
        assert_eq!(
            from(&[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.9.9.9")]),
            ip("203.0.113.5")
        );
        assert_eq!(
            from(&[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "203.0.113.5")
            ]),
            ip("203.0.113.5")
        );
        assert_eq!(
            from(&[(
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=192.0.2.9"
            )]),
            ip("2001:db8:cafe::17")
        );
        // Forwarded wins over X-Forwarded-For; nothing usable leaves the peer.
        assert_eq!(
            from(&[
                ("forwarded", "for=198.51.100.1"),
                ("x-forwarded-for", "203.0.113.5")
            ]),
            ip("198.51.100.1")
        );
        assert_eq!(from(&[("x-forwarded-for", "unknown")]), peer.ip());
        assert_eq!(from(&[]), peer.ip());
        assert_eq!(
            from(&[("x-forwarded-for", "10.0.0.1, 192.0.2.9")]),
            peer.ip()
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let peer: SocketAddr = "203.0.113.77:5000".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(trusted.client(peer, &h), peer);
        assert_eq!(TrustedProxies::default().client(peer, &h), peer);
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }
}
