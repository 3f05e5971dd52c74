//! Where a connection or a request comes from, as the server counts it.
//!
//! One host is rarely one IP address: it is given a whole IPv6 /64 as a
//! matter of course, often a /48, and can use any address in them. So a
//! bound per address would be no bound at all for IPv6. The server counts
//! by [`Client`] (an IPv4 address, or an IPv6 /64) what one machine holds
//! (its connections), and by [`Network`] (an IPv4 address, or an IPv6
//! /48) what one party may make the server spend (new connections a
//! second, signature checks of tokens it has not seen) and who gives way
//! when the server is full. An IPv4 address mapped into IPv6 counts as
//! itself.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One machine: an IPv4 address, or the /64 prefix of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Client {
    V4(u32),
    V6(u64),
}

/// One party: an IPv4 address, or the /48 prefix of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Network {
    V4(u32),
    V6(u64),
}

impl Client {
    /// The client `ip` is.
    pub(crate) fn of(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V4(v4) => Client::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4.into()),
                None => Client::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }

    /// The network it is in.
    pub(crate) fn network(self) -> Network {
        match self {
            Client::V4(v4) => Network::V4(v4),
            Client::V6(prefix) => Network::V6(prefix >> 16),
        }
    }
}

impl Network {
    /// The network `ip` is in.
    pub(crate) fn of(ip: IpAddr) -> Network {
        Client::of(ip).network()
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Network::V4(v4) => write!(f, "{}", Ipv4Addr::from(v4)),
            Network::V6(prefix) => write!(f, "{}/48", Ipv6Addr::from(u128::from(prefix) << 80)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::{Client, Network};

    fn v6(text: &str) -> IpAddr {
        text.parse::<Ipv6Addr>().unwrap().into()
    }

    #[test]
    fn a_client_is_an_ipv6_64_and_a_network_its_48() {
        assert_eq!(
            Client::of(v6("2001:db8:1:2::1")),
            Client::of(v6("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            Client::of(v6("2001:db8:1:2::1")),
            Client::of(v6("2001:db8:1:3::1"))
        );
        assert_eq!(
            Network::of(v6("2001:db8:1:2::1")),
            Network::of(v6("2001:db8:1:ffff::1"))
        );
        assert_ne!(
            Network::of(v6("2001:db8:1::1")),
            Network::of(v6("2001:db8:2::1"))
        );
        assert_eq!(
            Network::of(v6("2001:db8:1:2::1")).to_string(),
            "2001:db8:1::/48"
        );
    }

    #[test]
    fn an_ipv4_address_is_itself_mapped_or_not() {
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(
            Client::of(IpAddr::V6(v4.to_ipv6_mapped())),
            Client::of(IpAddr::V4(v4))
        );
        assert_eq!(Network::of(IpAddr::V4(v4)).to_string(), "192.0.2.7");
        assert_ne!(
            Network::of(IpAddr::V4(v4)),
            Network::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8)))
        );
    }
}
