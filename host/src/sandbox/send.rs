//! Sending an agent's HTTP request: the host resolves the name itself,
//! connects only to an address the request may reach, checks the server's
//! certificate against the name, and speaks HTTP/1.
//!
//! A right names a host (`http api.example.com`), and whoever controls that
//! name's DNS chooses the addresses it resolves to, and so where the
//! request goes: the host's own loopback services, the cloud's metadata
//! endpoint (169.254.169.254, which hands out the machine's credentials),
//! the private network the host sits in. So a name is connected to only at
//! a public (globally routable) address; an address inside the host's
//! networks (or `localhost`) is reached only written in the URL as a right
//! of the agent's own names it (`http 127.0.0.1:8080`, `http 10.0.0.5`),
//! not through `http *`. The address checked is the one connected to: the
//! name is resolved once, so a name rebinding between the check and the
//! connect gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use toka_kernel::HttpFailure;
use tokio::net::TcpStream;
use wasmtime_wasi_http::RequestOptions;
use wasmtime_wasi_http::io::TokioIo;

/// Why a request got no response, in words.
pub(crate) type Failed = (HttpFailure, String);

/// A response whose head came, its body still to read.
pub(crate) struct Sent {
    /// Status and headers.
    pub(crate) head: http::response::Parts,
    /// The body, read by the caller.
    pub(crate) body: Incoming,
    /// The connection's I/O, driven until this is dropped.
    _io: AbortOnDrop,
}

/// A spawned task, aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `request` (an absolute URL, `http` or `https`), within the
/// timeouts of `options` (each set): resolving and connecting within the
/// connect timeout, the response's head within the first-byte timeout;
/// `named`: the agent's rights name the URL's host (not `*`), so an
/// address inside the host's networks written there may be reached.
///
/// # Errors
///
/// Why there is no response: the name does not resolve or resolves only
/// to addresses a name may not reach ([`HttpFailure::Refused`]), no
/// address takes the connection, TLS fails, no answer in time, not HTTP.
pub(crate) async fn send(
    mut request: http::Request<Full<Bytes>>,
    options: &RequestOptions,
    named: bool,
) -> Result<Sent, Failed> {
    let forever = Duration::from_secs(600);
    let connect_timeout = options.connect_timeout.unwrap_or(forever);
    let first_byte_timeout = options.first_byte_timeout.unwrap_or(forever);
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => {
            return Err((
                HttpFailure::Other,
                format!("the scheme {other:?} is not http or https"),
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| (HttpFailure::Other, "the URL names no host".to_owned()))?;
    let host = authority.host().to_owned();
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let connecting = async {
        let addresses = addresses(&host, port, named).await?;
        connect(&host, &addresses).await
    };
    let stream = tokio::time::timeout(connect_timeout, connecting)
        .await
        .map_err(|_| {
            (
                HttpFailure::Timeout,
                format!("no connection to {host}:{port} within {connect_timeout:?}"),
            )
        })??;
    let handshake = async {
        if tls {
            let stream = tls_connector()
                .connect(server_name(&host)?, stream)
                .await
                .map_err(|e| (HttpFailure::Connection, format!("TLS with {host}: {e}")))?;
            http1(TokioIo::new(stream)).await
        } else {
            http1(TokioIo::new(stream)).await
        }
    };
    let (mut sender, io) = tokio::time::timeout(connect_timeout, handshake)
        .await
        .map_err(|_| {
            (
                HttpFailure::Timeout,
                format!("no TLS and HTTP handshake with {host}:{port} within {connect_timeout:?}"),
            )
        })??;
    // The request line names the path only (an absolute URL is for
    // proxies); `Host` is among the headers already.
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *request.uri_mut() = http::Uri::try_from(path)
        .map_err(|e| (HttpFailure::Other, format!("the request's path: {e}")))?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| {
            (
                HttpFailure::Timeout,
                format!("no response from {host}:{port} within {first_byte_timeout:?}"),
            )
        })?
        .map_err(|e| hyper_failure(&e))?;
    let (head, body) = response.into_parts();
    Ok(Sent {
        head,
        body,
        _io: io,
    })
}

/// What a connection's I/O failing, or its request, means for the agent.
pub(crate) fn hyper_failure(e: &hyper::Error) -> Failed {
    let failure = if e.is_timeout() {
        HttpFailure::Timeout
    } else if e.is_parse() || e.is_incomplete_message() {
        HttpFailure::Protocol
    } else {
        HttpFailure::Connection
    };
    (failure, e.to_string())
}

/// The HTTP/1 handshake on `io`; its I/O is driven by a task of its own
/// until the returned guard drops.
async fn http1<T>(
    io: TokioIo<T>,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        AbortOnDrop,
    ),
    Failed,
>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| hyper_failure(&e))?;
    let io = tokio::spawn(async move {
        // A failure shows as the request's or the body's error.
        let _ = connection.await;
    });
    Ok((sender, AbortOnDrop(io)))
}

/// The addresses a request to `host`:`port` may connect to: an IP literal
/// as written, and `localhost`'s, when public or `named` (the agent's
/// rights name the host); a name's public addresses.
async fn addresses(host: &str, port: u16, named: bool) -> Result<Vec<SocketAddr>, Failed> {
    let written = literal(host);
    let inside = host.eq_ignore_ascii_case("localhost") || written.is_some_and(|ip| !is_public(ip));
    if inside && !named {
        return Err((
            HttpFailure::Refused,
            format!(
                "{host} is inside the host's networks: a request reaches it only when a right of the agent's own names it (`http {host}:{port}`), not through `http *`"
            ),
        ));
    }
    if let Some(ip) = written {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| (HttpFailure::Dns, format!("resolving {host}: {e}")))?
        .collect();
    reachable(host, resolved)
}

/// Of the addresses `host` resolved to, those a request may connect to:
/// all of `localhost`'s (a right names it), a name's public ones.
fn reachable(host: &str, resolved: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Failed> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(resolved);
    }
    let public: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|a| is_public(a.ip()))
        .collect();
    match (public.is_empty(), resolved.first()) {
        (false, _) => Ok(public),
        (true, None) => Err((HttpFailure::Dns, format!("{host} resolves to no address"))),
        (true, Some(inside)) => Err((
            HttpFailure::Refused,
            format!(
                "{host} resolves only to addresses inside the host's networks ({}): a name is reached only at a public address; to reach an address inside, grant and use the address itself",
                inside.ip()
            ),
        )),
    }
}

/// `host` as an IP address, if it is one (an IPv6 one in brackets).
fn literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Connects to the first of `addresses` that takes the connection.
async fn connect(host: &str, addresses: &[SocketAddr]) -> Result<TcpStream, Failed> {
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some((address, e)),
        }
    }
    Err(match last {
        Some((address, e)) => (
            HttpFailure::Connection,
            format!("connecting to {host} at {address}: {e}"),
        ),
        None => (HttpFailure::Dns, format!("{host} resolves to no address")),
    })
}

/// The name the server's certificate must be for.
fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, Failed> {
    match literal(host) {
        Some(ip) => Ok(rustls::pki_types::ServerName::from(ip)),
        None => rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
            (
                HttpFailure::Dns,
                format!("{host} is not a name TLS takes: {e}"),
            )
        }),
    }
}

/// TLS with the web's root certificates (webpki-roots), made once.
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    tokio_rustls::TlsConnector::from(Arc::clone(config))
}

/// Whether `ip` is a public (globally routable) address: not the host's
/// own, a private network's, a link's (the cloud's metadata endpoint), a
/// carrier's NAT, multicast, or a range reserved for documentation,
/// benchmarks or later use; an IPv6 address embedding an IPv4 one (mapped,
/// compatible, NAT64) is judged by it.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // shared (carrier NAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || ip.is_multicast()
        || a >= 240) // reserved, and broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // IPv4-compatible (`::a.b.c.d`, deprecated) and NAT64's well-known
    // prefix (`64:ff9b::/96`) reach the IPv4 address they embed.
    if s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[..4] == [0x100, 0, 0, 0])) // discard
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use toka_kernel::HttpFailure;

    use super::{addresses, is_public, reachable};

    #[test]
    fn only_globally_routable_addresses_are_public() {
        let public = |s: &str| is_public(s.parse::<IpAddr>().unwrap());
        for inside in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!public(inside), "{inside} is inside");
        }
        for outside in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(public(outside), "{outside} is public");
        }
    }

    #[tokio::test]
    async fn a_name_is_reached_only_at_public_addresses_a_literal_as_written() {
        let at = |list: &[&str]| -> Vec<std::net::SocketAddr> {
            list.iter().map(|a| a.parse().unwrap()).collect()
        };
        // A name whose DNS says the cloud's metadata endpoint, or loopback.
        for inside in [&["169.254.169.254:80"][..], &["127.0.0.1:80", "[::1]:80"]] {
            let refused = reachable("evil.example", at(inside)).unwrap_err();
            assert_eq!(refused.0, HttpFailure::Refused, "{}", refused.1);
            assert_eq!(
                refused.1,
                format!(
                    "evil.example resolves only to addresses inside the host's networks ({}): a name is reached only at a public address; to reach an address inside, grant and use the address itself",
                    at(inside)[0].ip()
                )
            );
        }
        // Of a mix, only the public ones are tried.
        assert_eq!(
            reachable("mixed.example", at(&["10.0.0.1:443", "93.184.216.34:443"])),
            Ok(at(&["93.184.216.34:443"]))
        );
        assert_eq!(
            reachable("localhost", at(&["127.0.0.1:80"])),
            Ok(at(&["127.0.0.1:80"]))
        );
        assert_eq!(
            reachable("none.example", Vec::new()).unwrap_err().0,
            HttpFailure::Dns
        );
        // Written as the address, or as `localhost`, and named by a right.
        let literal = addresses("127.0.0.1", 80, true).await.unwrap();
        assert_eq!(literal, vec!["127.0.0.1:80".parse().unwrap()]);
        let bracketed = addresses("[::1]", 443, true).await.unwrap();
        assert_eq!(bracketed, vec!["[::1]:443".parse().unwrap()]);
        let localhost = addresses("localhost", 8080, true).await.unwrap();
        assert!(
            !localhost.is_empty() && localhost.iter().all(|a| a.ip().is_loopback()),
            "{localhost:?}"
        );
        // Through `http *` only: refused, before anything is resolved.
        for inside in [
            "127.0.0.1",
            "169.254.169.254",
            "[::1]",
            "localhost",
            "LOCALHOST",
        ] {
            let refused = addresses(inside, 80, false).await.unwrap_err();
            assert_eq!(refused.0, HttpFailure::Refused, "{}", refused.1);
            assert_eq!(
                refused.1,
                format!(
                    "{inside} is inside the host's networks: a request reaches it only when a right of the agent's own names it (`http {inside}:80`), not through `http *`"
                )
            );
        }
        // A public address written out needs no name.
        let public = addresses("93.184.216.34", 443, false).await.unwrap();
        assert_eq!(public, vec!["93.184.216.34:443".parse().unwrap()]);
    }
}
