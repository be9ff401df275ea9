//! "Who has H": the real `p2p tracker` and `p2p peer`s on 127.0.0.1; the peers announce the
//! content hashes they share, and an endpoint in this process asks the tracker who shares a
//! hash.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use p2p_core::service::{spawn_endpoint, EndpointConfig, EndpointHandle};
use p2p_proto::wire::{ContentHash, TransportKind};

/// Between two questions while waiting for an announcement: well under the tracker's
/// per-IP rate, which the peers' own requests (from the same 127.0.0.1) share.
const POLL: Duration = Duration::from_millis(20);

/// `name → (address, transport)` of the holders of `hash`.
async fn holders(
    client: &EndpointHandle,
    tracker: SocketAddr,
    hash: ContentHash,
) -> BTreeMap<String, (SocketAddr, TransportKind)> {
    let peers = client.who_has(tracker, hash).await.expect("who has");
    let listed = peers.len();
    let by_name: BTreeMap<_, _> = peers
        .into_iter()
        .map(|p| (p.name.to_string(), (p.addr, p.transport)))
        .collect();
    assert_eq!(by_name.len(), listed, "each holder once");
    by_name
}

/// Asks until the holders of `hash` are exactly `names` (the peers announce right after
/// registering, a moment after they print that they did), within [`DEADLINE`].
async fn holders_become(
    client: &EndpointHandle,
    tracker: SocketAddr,
    hash: ContentHash,
    names: &[&str],
) -> BTreeMap<String, (SocketAddr, TransportKind)> {
    let until = Instant::now() + DEADLINE;
    loop {
        let got = holders(client, tracker, hash).await;
        if got.keys().map(String::as_str).eq(names.iter().copied()) {
            return got;
        }
        assert!(
            Instant::now() < until,
            "holders of {hash} still {:?}, not {names:?}",
            got.keys()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Two peers share a file (one over UDP, one over TCP): both are listed as its holders, at
/// the addresses they listen on; a file only one shares lists that one, a hash nobody
/// shares lists none, and a peer that leaves is no longer listed.
#[test]
fn who_has_lists_the_live_peers_that_share_a_file() {
    let mut net = Net::start();
    let both = random_bytes(300_000, 1);
    net.seeder("alice", "udp")
        .share("a")
        .file("both.bin", &both)
        .file("alice-only.txt", b"only alice shares this")
        .start();
    net.seeder("bob", "tcp")
        .share("b")
        .file("both.bin", &both)
        .start();
    let tracker: SocketAddr = net.addr().parse().unwrap();
    let (alice, bob) = (net.peer_addr("alice"), net.peer_addr("bob"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async {
        let local = "127.0.0.1:0".parse().unwrap();
        let transport = p2p_transports::bind(TransportKind::Udp, local)
            .await
            .unwrap();
        let (client, _task) =
            spawn_endpoint(transport, TransportKind::Udp, EndpointConfig::default()).unwrap();
        let got = holders_become(&client, tracker, ContentHash::of(&both), &["alice", "bob"]).await;
        assert_eq!(got["alice"], (alice, TransportKind::Udp));
        assert_eq!(got["bob"], (bob, TransportKind::Tcp));
        let only = ContentHash::of(b"only alice shares this");
        holders_become(&client, tracker, only, &["alice"]).await;
        let nobody = ContentHash::of(b"no peer shares this");
        assert!(holders(&client, tracker, nobody).await.is_empty());
        client
    });
    // Bob leaves (unregisters on SIGTERM): his hashes go with him.
    net.peer("bob").terminate();
    net.tracker().wait_for("unregistered bob");
    runtime.block_on(async {
        let got = holders(&client, tracker, ContentHash::of(&both)).await;
        assert_eq!(got.keys().collect::<Vec<_>>(), ["alice"]);
        client.shutdown().await;
    });
}
