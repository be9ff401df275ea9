//! Finding sources by content on the BitTorrent Mainline DHT (BEP 5), with the `mainline`
//! crate: a peer started with `--dht` announces every content hash it shares under its
//! [`DhtKey`] with its listening port, and `get --dht` looks the key up (`get_peers`) to find
//! sources without a tracker, or besides the tracker's holders. docs/DHT.md tells how this
//! combines with the tracker, what it costs and what an attacker on the DHT can do.
//!
//! The DHT node runs on a thread of its own (the crate's actor, with its own UDP socket): the
//! endpoint's event loop never waits on it. [`DhtNode`] is the async face of that thread;
//! [`announce`] keeps a peer's hashes announced, [`lookup`] finds the holders of one;
//! [`publish`] keeps a peer's signed [`record`] (where the peers of its identity key listen)
//! on the DHT, and resolves a key's record.

pub(crate) mod announce;
pub(crate) mod key;
pub(crate) mod lookup;
pub(crate) mod plan;
pub(crate) mod publish;
pub(crate) mod record;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::time::Duration;

pub(crate) use key::DhtKey;

/// The public bootstrap nodes a node joins the DHT through when no `--dht-bootstrap` (nor
/// `P2P_DHT_BOOTSTRAP`, nor the config file's `dht-bootstrap`) names others; looked up when the
/// node starts.
pub(crate) const DEFAULT_BOOTSTRAP: [&str; 3] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
];

/// How long a DHT request waits for its answer (the crate's default is 2 s); a lookup that
/// met a dead node ends this much after its last request.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);

/// Why the DHT cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DhtError {
    /// No bootstrap node resolved to an IPv4 address (the Mainline DHT is IPv4 here).
    #[error(
        "no DHT bootstrap node resolves to an IPv4 address (tried {tried}): check the names \
         and the network, or pass --dht-bootstrap HOST:PORT"
    )]
    NoBootstrap {
        /// The nodes tried, as written.
        tried: String,
    },
    /// The node's UDP socket could not be opened.
    #[error("cannot start a DHT node on {bind}: {source}")]
    Start {
        /// Where it was to listen.
        bind: Ipv4Addr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The node's thread ended (it never does while a node is held).
    #[error("the DHT node stopped")]
    Stopped,
}

/// A Mainline DHT node (a client: it stores nothing for others until the crate finds it
/// reachable from outside) and the bootstrap nodes it was given, for messages.
#[derive(Clone, Debug)]
pub(crate) struct DhtNode {
    dht: mainline::async_dht::AsyncDht,
    /// The bootstrap nodes as given (or the defaults), for messages.
    bootstrap: Vec<String>,
}

impl DhtNode {
    /// Starts a node listening on `bind` (an ephemeral UDP port) that joins the DHT through
    /// `bootstrap` (`HOST:PORT`s; empty: [`DEFAULT_BOOTSTRAP`]). Names are looked up, and the
    /// node's thread started, on a blocking thread. Fails when no bootstrap node resolves.
    pub(crate) async fn start(bootstrap: &[SocketAddr], bind: Ipv4Addr) -> Result<Self, DhtError> {
        let written: Vec<String> = match bootstrap {
            [] => DEFAULT_BOOTSTRAP.iter().map(|s| s.to_string()).collect(),
            given => given.iter().map(|a| a.to_string()).collect(),
        };
        let names = written.clone();
        let started = tokio::task::spawn_blocking(move || start_blocking(&names, bind))
            .await
            .map_err(|_| DhtError::Stopped)??;
        Ok(DhtNode {
            dht: started,
            bootstrap: written,
        })
    }

    /// A node of a local test DHT (a `Testnet`'s), as a peer's node.
    #[cfg(test)]
    pub(crate) fn of_testnet(dht: &mainline::Dht) -> Self {
        DhtNode {
            dht: dht.clone().as_async(),
            bootstrap: Vec::new(),
        }
    }

    /// The bootstrap nodes it was given, for messages (`a:1, b:2`).
    pub(crate) fn bootstrap(&self) -> String {
        self.bootstrap.join(", ")
    }

    /// How many DHT nodes its routing table holds now (those not gone stale).
    pub(crate) async fn nodes_known(&self) -> usize {
        self.dht.to_bootstrap().await.len()
    }

    /// The crate's async node, for [`announce`] and [`lookup`].
    fn inner(&self) -> &mainline::async_dht::AsyncDht {
        &self.dht
    }
}

/// The IPv4 addresses of `names` (`HOST:PORT`), each name's first; those that do not
/// resolve are skipped.
fn resolve_ipv4(names: &[String]) -> Vec<SocketAddrV4> {
    names
        .iter()
        .filter_map(|n| {
            n.to_socket_addrs().ok()?.find_map(|a| match a {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            })
        })
        .collect()
}

/// [`DhtNode::start`]'s blocking part: resolve, then start the crate's node thread.
fn start_blocking(
    names: &[String],
    bind: Ipv4Addr,
) -> Result<mainline::async_dht::AsyncDht, DhtError> {
    let bootstrap = resolve_ipv4(names);
    if bootstrap.is_empty() {
        return Err(DhtError::NoBootstrap {
            tried: names.join(", "),
        });
    }
    let bootstrap: Vec<String> = bootstrap.iter().map(|a| a.to_string()).collect();
    let dht = mainline::Dht::builder()
        .bootstrap(&bootstrap)
        .bind_address(bind)
        // Never the crate's default 6881: two nodes on a machine would take turns at it.
        .port(0)
        .request_timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|source| DhtError::Start { bind, source })?;
    Ok(dht.as_async())
}

/// The IPv4 address a DHT node binds to serve a peer listening on `listen`: that address
/// when it is a specific IPv4 one (the DHT records the address announces come from), else
/// every IPv4 interface.
pub(crate) fn bind_for(listen: SocketAddr) -> Ipv4Addr {
    match listen {
        SocketAddr::V4(v4) => *v4.ip(),
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_ipv4_only_and_bad_ones_are_skipped() {
        let names = vec![
            "127.0.0.1:6881".to_string(),
            "[::1]:6881".to_string(),
            "no-port".to_string(),
        ];
        assert_eq!(resolve_ipv4(&names), ["127.0.0.1:6881".parse().unwrap()]);
    }

    #[test]
    fn a_node_binds_where_its_peer_listens() {
        assert_eq!(
            bind_for("127.0.0.1:7000".parse().unwrap()),
            Ipv4Addr::LOCALHOST
        );
        assert_eq!(
            bind_for("0.0.0.0:7000".parse().unwrap()),
            Ipv4Addr::UNSPECIFIED
        );
        assert_eq!(
            bind_for("[::]:7000".parse().unwrap()),
            Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn no_bootstrap_node_is_a_clear_error() {
        let e = start_blocking(&["no-port".into()], Ipv4Addr::LOCALHOST).unwrap_err();
        assert!(matches!(e, DhtError::NoBootstrap { .. }), "{e}");
        assert!(e.to_string().contains("--dht-bootstrap"), "{e}");
    }
}

#[cfg(test)]
mod network_tests;
