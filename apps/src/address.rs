//! Addresses as people write them: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`, turned into one
//! socket address, once, when a command starts, with an error that says what to type instead.
//!
//! A host name is looked up with the system's resolver (`/etc/hosts`, then DNS). When it has
//! several addresses, the first IPv4 one (in the resolver's order) is taken, and the first IPv6
//! one only when it has no IPv4 address: sockets listen on `0.0.0.0` and reach out from IPv4 by
//! default, so an IPv4 address is the one every peer can use. Write `[::1]:9000` or another
//! IPv6 literal to use IPv6.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use anyhow::Result;

/// An example of an address that works, for the hints.
const EXAMPLE: &str = "192.0.2.7:9000";

/// Why a written address cannot be used. Its `Display` says what was wrong and what to type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Nothing was written.
    Empty,
    /// A host or IP without `:PORT`.
    MissingPort {
        /// What was written.
        text: String,
        /// The same address with a port, to copy.
        example: String,
    },
    /// Something after the last `:` that is not a port number.
    BadPort {
        /// What was written.
        text: String,
        /// The part that should have been a port.
        port: String,
    },
    /// `[` without its `]`, or something other than an IPv6 address between them.
    BadBrackets {
        /// What was written.
        text: String,
    },
    /// An IPv6 address with a port but without brackets (`::1:9000` is ambiguous).
    UnbracketedIpv6 {
        /// What was written.
        text: String,
    },
    /// A URL (`udp://host:9000`) instead of an address.
    Scheme {
        /// What was written.
        text: String,
        /// The address without the scheme.
        without: String,
    },
    /// A host name with characters no host name has.
    BadHost {
        /// What was written.
        text: String,
    },
    /// The resolver does not know the name (or could not be asked).
    Unresolved {
        /// What was written.
        text: String,
        /// What the resolver said.
        reason: String,
    },
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Empty => write!(
                f,
                "no address given: write HOST:PORT, e.g. localhost:9000 or {EXAMPLE}"
            ),
            AddressError::MissingPort { text, example } => write!(
                f,
                "`{text}` has no port: add one, e.g. {example}"
            ),
            AddressError::BadPort { text, port } => write!(
                f,
                "`{text}`: `{port}` is not a port number (0 to 65535): write HOST:PORT, e.g. {EXAMPLE}"
            ),
            AddressError::BadBrackets { text } => write!(
                f,
                "`{text}`: brackets hold an IPv6 address followed by :PORT, e.g. [::1]:9000 or [2001:db8::7]:9000"
            ),
            AddressError::UnbracketedIpv6 { text } => write!(
                f,
                "`{text}`: put an IPv6 address in brackets before its port, e.g. [::1]:9000"
            ),
            AddressError::Scheme { text, without } => write!(
                f,
                "`{text}`: give the address alone, without a scheme: {without}"
            ),
            AddressError::BadHost { text } => write!(
                f,
                "`{text}` is not an address: write HOST:PORT (letters, digits, `-` and `.` in the host), IP:PORT or [IPv6]:PORT, e.g. {EXAMPLE}"
            ),
            AddressError::Unresolved { text, reason } => write!(
                f,
                "`{text}`: cannot resolve the host name ({reason}): check the name, or give an IP address such as {EXAMPLE}"
            ),
        }
    }
}

impl std::error::Error for AddressError {}

/// What a written address says, before any lookup.
#[derive(Debug, PartialEq, Eq)]
enum Written<'a> {
    /// An IP address and port: nothing to look up.
    Literal(SocketAddr),
    /// A host name to look up, and the port.
    Name(&'a str, u16),
}

/// The socket address `text` names: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (surrounding
/// spaces ignored). A host name is looked up now, and when it has several addresses the first
/// IPv4 one is taken (the first IPv6 one when it has no IPv4 address); see the module docs.
///
/// ```ignore
/// assert_eq!(resolve("[::1]:9000")?, "[::1]:9000".parse()?);
/// assert_eq!(resolve("localhost:9000")?.port(), 9000);
/// ```
pub fn resolve(text: &str) -> Result<SocketAddr, AddressError> {
    match parse(text)? {
        Written::Literal(addr) => Ok(addr),
        Written::Name(host, port) => lookup(text.trim(), host, port),
    }
}

/// Looks `host` up; `text` is what was written, for the error.
fn lookup(text: &str, host: &str, port: u16) -> Result<SocketAddr, AddressError> {
    let unresolved = |reason: String| AddressError::Unresolved {
        text: text.to_string(),
        reason,
    };
    let found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| unresolved(resolver_reason(&e)))?
        .collect();
    pick(&found).ok_or_else(|| unresolved("the name has no address".into()))
}

/// The resolver's complaint without std's prefix, which says nothing to a user.
fn resolver_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let reason = text
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text);
    reason.to_string()
}

/// Of the addresses a name resolves to: the first IPv4 one, else the first IPv6 one.
fn pick(found: &[SocketAddr]) -> Option<SocketAddr> {
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| found.first())
        .copied()
}

/// Splits `text` into an IP literal or a host name and a port, without any lookup.
fn parse(text: &str) -> Result<Written<'_>, AddressError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(AddressError::Empty);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Written::Literal(addr));
    }
    if let Some((_, rest)) = text.split_once("://") {
        return Err(AddressError::Scheme {
            text: text.into(),
            without: rest.trim_end_matches('/').into(),
        });
    }
    if let Some(inner) = text.strip_prefix('[') {
        return parse_bracketed(text, inner);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Err(missing_port(text, ip));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        check_host(text, text)?;
        return Err(AddressError::MissingPort {
            text: text.into(),
            example: format!("{text}:9000"),
        });
    };
    if host.contains(':') {
        return Err(AddressError::UnbracketedIpv6 { text: text.into() });
    }
    check_host(text, host)?;
    let port = parse_port(text, port)?;
    // `1.2.3:80` and the like: std reads only full dotted quads.
    if host.parse::<Ipv4Addr>().is_err() && host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(AddressError::BadHost { text: text.into() });
    }
    Ok(Written::Name(host, port))
}

/// `[IPv6]:PORT`, with `inner` what follows the `[`.
fn parse_bracketed<'a>(text: &'a str, inner: &'a str) -> Result<Written<'a>, AddressError> {
    let bad = || AddressError::BadBrackets { text: text.into() };
    let (ip, after) = inner.split_once(']').ok_or_else(bad)?;
    let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
    match after.strip_prefix(':') {
        Some(port) => {
            let port = parse_port(text, port)?;
            Ok(Written::Literal(SocketAddr::new(IpAddr::V6(ip), port)))
        }
        None if after.is_empty() => Err(missing_port(text, IpAddr::V6(ip))),
        None => Err(bad()),
    }
}

fn parse_port(text: &str, port: &str) -> Result<u16, AddressError> {
    if port.is_empty() {
        return Err(AddressError::MissingPort {
            text: text.into(),
            example: format!("{text}9000"),
        });
    }
    port.parse().map_err(|_| AddressError::BadPort {
        text: text.into(),
        port: port.into(),
    })
}

fn missing_port(text: &str, ip: IpAddr) -> AddressError {
    AddressError::MissingPort {
        text: text.into(),
        example: SocketAddr::new(ip, 9000).to_string(),
    }
}

/// Refuses a host with characters no host name has (spaces, `/`, `@`, …): the resolver would
/// only say it does not know it.
fn check_host(text: &str, host: &str) -> Result<(), AddressError> {
    let fits = |c: char| c.is_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.is_empty() || !host.chars().all(fits) {
        return Err(AddressError::BadHost { text: text.into() });
    }
    Ok(())
}

/// The address a client socket binds to reach `to`: the loopback for a loopback `to` (so that
/// the tracker registers what other local processes can reach), else any interface, in `to`'s
/// address family (an IPv4 socket cannot send to an IPv6 address, nor the reverse).
pub(crate) fn client_bind(to: SocketAddr) -> SocketAddr {
    let ip = match (to.is_ipv4(), to.ip().is_loopback()) {
        (true, true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (true, false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (false, true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (false, false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ip_literals_need_no_lookup() {
        assert_eq!(
            parse("192.0.2.7:9000"),
            Ok(Written::Literal(sock("192.0.2.7:9000")))
        );
        assert_eq!(
            parse("[::1]:9000"),
            Ok(Written::Literal(sock("[::1]:9000")))
        );
        assert_eq!(
            parse("  [2001:db8::7]:1  "),
            Ok(Written::Literal(sock("[2001:db8::7]:1")))
        );
        assert_eq!(resolve("[::]:0"), Ok(sock("[::]:0")));
    }

    #[test]
    fn host_names_are_split_from_their_port() {
        assert_eq!(
            parse("localhost:9000"),
            Ok(Written::Name("localhost", 9000))
        );
        assert_eq!(
            parse("tracker-1.example.org:65535"),
            Ok(Written::Name("tracker-1.example.org", 65535))
        );
        assert_eq!(
            parse("héllo.example:1"),
            Ok(Written::Name("héllo.example", 1))
        );
    }

    #[test]
    fn a_missing_port_says_so_with_an_example() {
        let cases = [
            ("localhost", "localhost:9000"),
            ("localhost:", "localhost:9000"),
            ("192.0.2.7", "192.0.2.7:9000"),
            ("::1", "[::1]:9000"),
            ("[::1]", "[::1]:9000"),
            ("[::1]:", "[::1]:9000"),
        ];
        for (text, example) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(
                e,
                AddressError::MissingPort {
                    text: text.into(),
                    example: example.into()
                }
            );
            let shown = e.to_string();
            assert!(shown.contains("has no port"), "{shown}");
            assert!(shown.contains(example), "{shown}");
        }
    }

    #[test]
    fn a_bad_port_is_named() {
        for (text, port) in [
            ("localhost:http", "http"),
            ("h:65536", "65536"),
            ("h:-1", "-1"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(
                e,
                AddressError::BadPort {
                    text: text.into(),
                    port: port.into()
                }
            );
            assert!(e.to_string().contains("is not a port number"));
        }
        assert!(matches!(
            parse("[::1]:x"),
            Err(AddressError::BadPort { .. })
        ));
    }

    #[test]
    fn ipv6_needs_its_brackets() {
        // Nine groups: an address and a port, written without brackets.
        assert_eq!(
            parse("1:2:3:4:5:6:7:8:9000"),
            Err(AddressError::UnbracketedIpv6 {
                text: "1:2:3:4:5:6:7:8:9000".into()
            })
        );
        // A valid IPv6 address alone: its last group is not taken for a port.
        assert!(matches!(
            parse("2001:db8::7:9000"),
            Err(AddressError::MissingPort { example, .. }) if example == "[2001:db8::7:9000]:9000"
        ));
        for text in ["[::1", "[nope]:9000", "[::1]9000", "[localhost]:9000"] {
            let e = parse(text).unwrap_err();
            assert_eq!(e, AddressError::BadBrackets { text: text.into() });
            assert!(e.to_string().contains("[::1]:9000"));
        }
    }

    #[test]
    fn urls_and_junk_are_refused_before_any_lookup() {
        assert_eq!(
            parse("udp://localhost:9000/"),
            Err(AddressError::Scheme {
                text: "udp://localhost:9000/".into(),
                without: "localhost:9000".into()
            })
        );
        for text in [
            "a b:1",
            "user@host:1",
            "a/b:1",
            ":9000",
            "1.2.3:80",
            "nohost",
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                matches!(
                    e,
                    AddressError::BadHost { .. } | AddressError::MissingPort { .. }
                ),
                "{text}: {e:?}"
            );
        }
        assert_eq!(parse(""), Err(AddressError::Empty));
        assert_eq!(parse("   "), Err(AddressError::Empty));
    }

    #[test]
    fn ipv4_is_preferred_among_several_addresses() {
        let v6 = sock("[2001:db8::1]:9000");
        let v4 = sock("192.0.2.1:9000");
        let v4b = sock("192.0.2.2:9000");
        assert_eq!(pick(&[v6, v4, v4b]), Some(v4));
        assert_eq!(pick(&[v4b, v4]), Some(v4b));
        assert_eq!(pick(&[v6, sock("[2001:db8::2]:9000")]), Some(v6));
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn localhost_resolves_to_a_loopback_address() {
        let addr = resolve("localhost:9000").unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 9000);
    }

    #[test]
    fn an_unknown_name_says_what_to_do() {
        // `.invalid` never resolves (RFC 6761).
        let e = resolve("nosuch.invalid:9000").unwrap_err();
        assert!(matches!(e, AddressError::Unresolved { .. }), "{e:?}");
        let shown = e.to_string();
        assert!(
            shown.starts_with("`nosuch.invalid:9000`: cannot resolve the host name ("),
            "{shown}"
        );
        assert!(
            shown.ends_with("give an IP address such as 192.0.2.7:9000"),
            "{shown}"
        );
    }

    #[test]
    fn clients_bind_in_the_family_of_their_destination() {
        assert_eq!(client_bind(sock("127.0.0.1:9")), sock("127.0.0.1:0"));
        assert_eq!(client_bind(sock("192.0.2.7:9")), sock("0.0.0.0:0"));
        assert_eq!(client_bind(sock("[::1]:9")), sock("[::1]:0"));
        assert_eq!(client_bind(sock("[2001:db8::7]:9")), sock("[::]:0"));
    }
}
