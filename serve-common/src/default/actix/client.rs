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

/// The header the trusted proxies write the client's address in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, most load balancers).
    XForwardedFor,
    /// RFC 7239's `Forwarded: for=`.
    Forwarded,
}

/// What the running service trusts (set when it builds its app).
struct Trust {
    proxies: Vec<IpNet>,
    header: ForwardedHeader,
}

static TRUSTED: Lazy<ArcSwap<Trust>> = Lazy::new(|| {
    ArcSwap::from_pointee(Trust {
        proxies: Vec::new(),
        header: ForwardedHeader::XForwardedFor,
    })
});

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

/// Parses `server.forwarded_header`.
pub(crate) fn parse_header(name: Option<&str>) -> Result<ForwardedHeader, String> {
    match name.map(str::to_ascii_lowercase).as_deref() {
        None | Some("x-forwarded-for") => Ok(ForwardedHeader::XForwardedFor),
        Some("forwarded") => Ok(ForwardedHeader::Forwarded),
        Some(other) => Err(format!(
            "`forwarded_header`: {other:?} is neither \"x-forwarded-for\" nor \"forwarded\""
        )),
    }
}

/// Makes `proxies` the trusted ones, writing the client's address in
/// `header`.
pub(crate) fn trust(proxies: Vec<IpNet>, header: ForwardedHeader) {
    TRUSTED.store(Arc::new(Trust { proxies, header }));
}

/// The client's address of `request`, if the connection has a peer.
pub(crate) fn address(request: &ServiceRequest) -> Option<IpAddr> {
    let peer = request.peer_addr()?.ip();
    let trust = TRUSTED.load();
    Some(resolve(
        peer,
        request.headers(),
        &trust.proxies,
        trust.header,
    ))
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Walks the forwarded hops from the nearest one back: the first that is
/// not a trusted proxy is the client. An entry that cannot be read (an
/// obfuscated or broken one) ends the walk at the last trusted hop: what
/// lies before it was written by someone not trusted. Only `header` is
/// read: the other one may come from the client, passed through.
fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let hops = match header {
        ForwardedHeader::Forwarded => forwarded_for(headers),
        ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let Some(hop) = hop else {
            break;
        };
        client = hop.to_canonical();
        if !is_trusted(client, trusted) {
            break;
        }
    }
    client
}

/// The `for=` nodes of every `Forwarded` header, in order (RFC 7239:
/// `for=192.0.2.60`, `for="[2001:db8::1]:4711"`); `None` for one that is
/// not an address (`for=_hidden`, `for=unknown`) or an element without
/// `for=`.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    for value in headers.get_all(FORWARDED) {
        let Ok(value) = value.to_str() else {
            out.push(None);
            continue;
        };
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim().eq_ignore_ascii_case("for").then(|| value.trim())
            });
            out.push(node.and_then(|node| parse_node(node.trim_matches('"'))));
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

/// The entries of every `X-Forwarded-For` header, in order; `None` for one
/// that is not an address.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            out.push(None);
            continue;
        };
        out.extend(value.split(',').map(|node| parse_node(node.trim())));
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
        let xff = ForwardedHeader::XForwardedFor;
        let hops = headers(&[("x-forwarded-for", "203.0.113.7, 10.1.2.3")]);
        let walk = |peer: &str, hops: &HeaderMap| resolve(ip(peer), hops, &trusted, xff);
        // A trusted peer: walk back past the trusted hop.
        assert_eq!(walk("192.168.1.1", &hops), ip("203.0.113.7"));
        // An IPv4 peer seen on an IPv6 socket is trusted all the same.
        assert_eq!(walk("::ffff:192.168.1.1", &hops), ip("203.0.113.7"));
        // An untrusted peer: its header is ignored.
        assert_eq!(walk("198.51.100.9", &hops), ip("198.51.100.9"));
        // No trusted proxies configured: always the peer.
        assert_eq!(resolve(ip("10.0.0.1"), &hops, &[], xff), ip("10.0.0.1"));
        // A forged entry before an untrusted hop does not count.
        let forged = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        assert_eq!(walk("10.0.0.1", &forged), ip("203.0.113.7"));
        // A broken entry ends the walk: the client's own entries before it
        // are not believed.
        let broken = headers(&[("x-forwarded-for", "6.6.6.6, x, 10.0.0.9")]);
        assert_eq!(walk("10.0.0.1", &broken), ip("10.0.0.9"));
        // Nothing forwarded: the peer.
        assert_eq!(walk("10.0.0.1", &headers(&[])), ip("10.0.0.1"));
        // A Forwarded header the client wrote is not read when the proxies
        // write X-Forwarded-For.
        let both = headers(&[
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        assert_eq!(walk("10.0.0.1", &both), ip("203.0.113.7"));
    }

    #[test]
    fn the_forwarded_header_reads_every_form_when_chosen() {
        let trusted = parse(&["10.0.0.0/8".to_owned()]).unwrap();
        let rfc = ForwardedHeader::Forwarded;
        let walk = |hops: &HeaderMap| resolve(ip("10.0.0.2"), hops, &trusted, rfc);
        let both = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.5",
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(walk(&both), ip("2001:db8::1"));
        let port = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(walk(&port), ip("192.0.2.60"));
        // An obfuscated node: what lies before it is unknown; the nearest
        // trusted hop stands.
        let hidden = headers(&[("forwarded", "for=6.6.6.6, for=_hidden, for=10.0.0.7")]);
        assert_eq!(walk(&hidden), ip("10.0.0.7"));
        assert_eq!(parse_header(Some("Forwarded")), Ok(rfc));
        assert!(parse_header(Some("x-real-ip"))
            .unwrap_err()
            .contains("forwarded_header"));
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
