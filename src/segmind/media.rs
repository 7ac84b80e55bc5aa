//! Where the worker may fetch a result's audio from. The API names the media
//! URL, and the API is an upstream the worker does not control: a URL (or a
//! redirect) pointing at a cloud metadata address, the broker's management
//! port or any other in-cluster service would otherwise be fetched with the
//! pod's network position and delivered as the job's audio (SSRF).
//!
//! The rule, checked on the URL, on every redirect's URL and on the address
//! each host name resolves to (so a name cannot resolve to a private address
//! after the URL was checked):
//! - `https` only, to public unicast addresses only;
//! - unless the origin (`host:port`) is listed in
//!   `segmind.media_allow_private` (a simulator on loopback, a media proxy
//!   inside the cluster): then any scheme and any address. Another port of a
//!   listed host is not listed.
//!
//! [`MediaPolicy::check`] is the pure part; [`PublicResolver`] enforces the
//! resolved addresses inside the media HTTP client, and
//! [`MediaPolicy::redirect_policy`] re-checks each redirect before it is
//! followed. A refusal is a [`MediaRefusal`]; nothing is fetched.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

use crate::config::MediaOrigin;

/// Redirects one download may follow.
const MAX_REDIRECTS: usize = 5;

/// Why a media URL is not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaRefusal {
    #[error(
        "the media URL {url} is not https (only origins in segmind.media_allow_private may be)"
    )]
    NotHttps { url: String },
    #[error(
        "the media URL {url} points at a non-public address ({addr}); list its origin in \
         segmind.media_allow_private to fetch it"
    )]
    Private { url: String, addr: IpAddr },
    #[error(
        "the media host {host} resolves to non-public addresses only ({addr}); list its origin in \
         segmind.media_allow_private to fetch it"
    )]
    Resolved { host: String, addr: IpAddr },
    #[error(
        "the media URL {url} is on a listed host but not a listed port (segmind.media_allow_private)"
    )]
    OtherPort { url: String },
    #[error("the media URL {url} has no host")]
    NoHost { url: String },
    #[error("the media URL {url} carries credentials; they are never sent")]
    Credentials { url: String },
    #[error("the media download was redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects,
}

impl MediaRefusal {
    /// The refusal found anywhere in `error`'s source chain (a resolver's or a
    /// redirect policy's refusal comes back wrapped in the client's error).
    pub fn in_chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a MediaRefusal> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(refusal) = e.downcast_ref::<MediaRefusal>() {
                return Some(refusal);
            }
            next = e.source();
        }
        None
    }
}

/// A URL as it may be logged or published: scheme, host, port and path;
/// never the query (a signed URL's signature) or a fragment or credentials.
pub fn redacted(url: &Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    if let Some(host) = url.host_str() {
        shown.push_str(host);
    }
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

/// The media origins the operator allows off the public internet.
#[derive(Debug, Clone, Default)]
pub struct MediaPolicy {
    allowed: HashSet<(String, u16)>,
    hosts: HashSet<String>,
}

impl MediaPolicy {
    pub fn new(allowed: &[MediaOrigin]) -> Self {
        Self {
            allowed: allowed.iter().map(|o| (o.host.clone(), o.port)).collect(),
            hosts: allowed.iter().map(|o| o.host.clone()).collect(),
        }
    }

    fn listed(&self, url: &Url) -> Option<bool> {
        let host = MediaOrigin::host_of(url)?;
        let port = url.port_or_known_default()?;
        Some(self.allowed.contains(&(host, port)))
    }

    /// Whether `url` may be requested: its scheme, and its host when the
    /// host is an address. A host name's addresses are checked when it is
    /// resolved ([`PublicResolver`]).
    pub fn check(&self, url: &Url) -> Result<(), MediaRefusal> {
        let shown = || redacted(url);
        let Some(host) = url.host() else {
            return Err(MediaRefusal::NoHost { url: shown() });
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(MediaRefusal::Credentials { url: shown() });
        }
        if self.listed(url) == Some(true) {
            return Ok(());
        }
        if MediaOrigin::host_of(url).is_some_and(|h| self.hosts.contains(&h)) {
            return Err(MediaRefusal::OtherPort { url: shown() });
        }
        if url.scheme() != "https" {
            return Err(MediaRefusal::NotHttps { url: shown() });
        }
        let addr = match host {
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6(a) => Some(IpAddr::V6(a)),
            Host::Domain(_) => None,
        };
        match addr {
            Some(addr) if !is_public(addr) => Err(MediaRefusal::Private { url: shown(), addr }),
            _ => Ok(()),
        }
    }

    /// The media client's redirect policy: each hop is checked like the
    /// first URL, at most [`MAX_REDIRECTS`] hops.
    pub fn redirect_policy(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let policy = Arc::clone(self);
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(MediaRefusal::TooManyRedirects);
            }
            match policy.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(refusal),
            }
        })
    }

    /// The media client's resolver: the listed hosts resolve as they are,
    /// any other name only to its public addresses.
    pub fn resolver(self: &Arc<Self>) -> Arc<PublicResolver> {
        Arc::new(PublicResolver {
            policy: Arc::clone(self),
        })
    }
}

/// A DNS resolver that keeps only public addresses, except for the hosts of
/// listed origins ([`MediaPolicy::check`] has refused their other ports
/// before any resolution).
pub struct PublicResolver {
    policy: Arc<MediaPolicy>,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let listed = self.policy.hosts.contains(&host);
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if listed {
                return Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs);
            }
            let public: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect();
            match (public.is_empty(), found.first()) {
                (false, _) => Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs),
                (true, Some(first)) => Err(Box::new(MediaRefusal::Resolved {
                    host,
                    addr: first.ip(),
                })
                    as Box<dyn std::error::Error + Send + Sync>),
                (true, None) => Err(format!("{host} resolves to no address").into()),
            }
        })
    }
}

/// Whether `addr` is a public unicast address: not loopback, private,
/// link-local (cloud metadata: 169.254.169.254, fd00:ec2::254), shared
/// (carrier-grade NAT), unique-local, documentation, benchmarking,
/// multicast, broadcast, reserved or unspecified. IPv4-mapped and NAT64
/// IPv6 addresses are judged by their IPv4 address.
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => is_public_v6(a),
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let [b0, b1, b2, _] = a.octets();
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_broadcast()
        || a.is_documentation()
        || a.is_multicast()
        || b0 == 0
        || (b0 == 100 && (b1 & 0xc0) == 64) // 100.64.0.0/10, shared
        || (b0 == 192 && b1 == 0 && b2 == 0) // 192.0.0.0/24, protocol assignments
        || (b0 == 198 && (b1 & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || b0 >= 240) // 240.0.0.0/4, reserved
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = a.segments();
    // 64:ff9b::/96, NAT64: the IPv4 address it stands for; 64:ff9b:1::/48,
    // local-use NAT64, is not public.
    if s[..3] == [0x64, 0xff9b, 1] {
        return false;
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [h, l] = [s[6], s[7]];
        return is_public_v4(Ipv4Addr::new(
            (h >> 8) as u8,
            h as u8,
            (l >> 8) as u8,
            l as u8,
        ));
    }
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || a.is_unique_local()
        || a.is_unicast_link_local()
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo: tunnels to any IPv4 address
        || s[0] == 0x2002 // 6to4: tunnels to any IPv4 address
        || s[0] == 0 // ::/16 and the deprecated IPv4-compatible range
        || (s[0] & 0xffc0) == 0xfec0) // site-local, deprecated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(host: &str, port: u16) -> MediaOrigin {
        MediaOrigin {
            host: host.into(),
            port,
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "ff02::1",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn https_to_a_public_host_is_fetched_and_anything_else_only_when_listed() {
        let policy = MediaPolicy::new(&[origin("127.0.0.1", 18091), origin("segmind-sim", 8091)]);
        assert_eq!(
            policy.check(&url("https://cdn.example.com/a.wav?sig=x")),
            Ok(())
        );
        assert_eq!(policy.check(&url("https://8.8.8.8/a.wav")), Ok(()));
        assert_eq!(
            policy.check(&url("http://127.0.0.1:18091/media/a.wav")),
            Ok(())
        );
        assert_eq!(
            policy.check(&url("http://Segmind-Sim:8091/media/a.wav")),
            Ok(())
        );
        assert!(matches!(
            policy.check(&url("http://cdn.example.com/a.wav")),
            Err(MediaRefusal::NotHttps { .. })
        ));
        assert!(matches!(
            policy.check(&url("https://169.254.169.254/latest/meta-data/")),
            Err(MediaRefusal::Private { .. })
        ));
        assert!(matches!(
            policy.check(&url("https://[::ffff:10.0.0.1]/a.wav")),
            Err(MediaRefusal::Private { .. })
        ));
        // Another port of a listed host is not listed.
        assert!(matches!(
            policy.check(&url("http://127.0.0.1:15672/api/overview")),
            Err(MediaRefusal::OtherPort { .. })
        ));
        assert!(matches!(
            MediaPolicy::default().check(&url("http://127.0.0.1:18091/media/a.wav")),
            Err(MediaRefusal::NotHttps { .. })
        ));
        assert!(matches!(
            policy.check(&url("https://user:pw@cdn.example.com/a.wav")),
            Err(MediaRefusal::Credentials { .. })
        ));
    }

    #[test]
    fn a_refusal_never_shows_the_query_of_a_signed_url() {
        let policy = MediaPolicy::default();
        let err = policy
            .check(&url(
                "http://media.example.com/a.wav?X-Amz-Signature=secret",
            ))
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert_eq!(
            redacted(&url("https://u:p@h.example:8443/a/b.wav?sig=1#f")),
            "https://h.example:8443/a/b.wav?…"
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_unless_listed() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let refused = Arc::new(MediaPolicy::default()).resolver();
        let err = match refused
            .resolve(reqwest::dns::Name::from_str("localhost").unwrap())
            .await
        {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(
            matches!(
                MediaRefusal::in_chain(err.as_ref()),
                Some(MediaRefusal::Resolved { .. })
            ),
            "{err}"
        );
        let listed = Arc::new(MediaPolicy::new(&[origin("localhost", 18091)])).resolver();
        let addrs: Vec<_> = listed
            .resolve(reqwest::dns::Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
