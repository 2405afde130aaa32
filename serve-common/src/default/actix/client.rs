//! The client's address (`server.trusted_proxies`): the connection's peer,
//! or, when that peer is a proxy the service trusts, the address the
//! proxies say they forwarded for (`Forwarded: for=`, else
//! `X-Forwarded-For`), walked from the nearest hop back past every trusted
//! one. A header from an untrusted peer is ignored: anyone can write one.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::dev::ServiceRequest;
use actix_web::http::header::{HeaderMap, FORWARDED};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use once_cell::sync::Lazy;

/// The trusted proxies of the running service (set when it builds its app).
static TRUSTED: Lazy<ArcSwap<Vec<IpNet>>> = Lazy::new(|| ArcSwap::from_pointee(Vec::new()));

/// Parses `server.trusted_proxies` (addresses or CIDR ranges), naming the
/// key in the error.
pub(crate) fn parse(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "`trusted_proxies`: {entry:?} is neither an address nor a CIDR range (\"10.0.0.0/8\")"
                    )
                })
        })
        .collect()
}

/// Makes `proxies` the trusted ones.
pub(crate) fn trust(proxies: Vec<IpNet>) {
    TRUSTED.store(Arc::new(proxies));
}

/// The client's address of `request`, if the connection has a peer.
pub(crate) fn address(request: &ServiceRequest) -> Option<IpAddr> {
    let peer = request.peer_addr()?.ip();
    let trusted = TRUSTED.load();
    Some(resolve(peer, request.headers(), &trusted))
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The first address, from the nearest hop back, that is not a trusted
/// proxy; `peer` itself when it is not trusted or nothing was forwarded.
fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = forwarded_for(headers);
    if hops.is_empty() {
        hops = x_forwarded_for(headers);
    }
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(hop, trusted) {
            break;
        }
    }
    client
}

/// The `for=` addresses of every `Forwarded` header, in order (RFC 7239:
/// `for=192.0.2.60`, `for="[2001:db8::1]:4711"`); obfuscated ones end the
/// list (nothing behind them can be trusted).
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for value in headers.get_all(FORWARDED) {
        let Ok(value) = value.to_str() else {
            return Vec::new();
        };
        for element in value.split(',') {
            let Some(node) = element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim().eq_ignore_ascii_case("for").then(|| value.trim())
            }) else {
                continue;
            };
            match parse_node(node.trim_matches('"')) {
                Some(ip) => out.push(ip),
                None => return out,
            }
        }
    }
    out
}

/// `192.0.2.60`, `192.0.2.60:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.parse()
        .ok()
        .or_else(|| node.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()))
}

/// The addresses of every `X-Forwarded-For` header, in order.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return Vec::new();
        };
        for node in value.split(',') {
            match parse_node(node.trim()) {
                Some(ip) => out.push(ip),
                None => return out,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_peers() {
        let trusted = parse(&["10.0.0.0/8".to_owned(), "192.168.1.1".to_owned()]).unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.7, 10.1.2.3")]);
        // A trusted peer: walk back past the trusted hop.
        assert_eq!(
            resolve(ip("192.168.1.1"), &xff, &trusted),
            ip("203.0.113.7")
        );
        // An untrusted peer: its header is ignored.
        assert_eq!(
            resolve(ip("198.51.100.9"), &xff, &trusted),
            ip("198.51.100.9")
        );
        // No trusted proxies configured: always the peer.
        assert_eq!(resolve(ip("10.0.0.1"), &xff, &[]), ip("10.0.0.1"));
        // A forged entry before an untrusted hop does not count.
        let forged = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &forged, &trusted),
            ip("203.0.113.7")
        );
        // Nothing forwarded: the peer.
        assert_eq!(
            resolve(ip("10.0.0.1"), &headers(&[]), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_forwarded_header_wins_and_reads_every_form() {
        let trusted = parse(&["10.0.0.0/8".to_owned()]).unwrap();
        let both = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.5",
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(resolve(ip("10.0.0.2"), &both, &trusted), ip("2001:db8::1"));
        let port = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(resolve(ip("10.0.0.2"), &port, &trusted), ip("192.0.2.60"));
        // An obfuscated node: nothing behind it is known; the nearest known
        // hop stands.
        let hidden = headers(&[("forwarded", "for=_hidden, for=10.0.0.7")]);
        assert_eq!(resolve(ip("10.0.0.2"), &hidden, &trusted), ip("10.0.0.2"));
    }

    #[test]
    fn bad_entries_name_the_key() {
        let error = parse(&["10.0.0.0/33".to_owned()]).unwrap_err();
        assert!(
            error.contains("trusted_proxies") && error.contains("10.0.0.0/33"),
            "{error}"
        );
        assert!(parse(&["::1".to_owned(), "fd00::/8".to_owned()]).is_ok());
    }
}
