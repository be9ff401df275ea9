//! Signed peer records: where the peers of an identity key can be reached, published on the
//! Mainline DHT as a BEP 44 mutable item that only the key's holder can change. A ticket (or a
//! user) that knows a sharer's key finds its current addresses there without a tracker.
//!
//! - **Where**: the item of the peer's Ed25519 key with the salt [`SALT`]
//!   (`p2p-peer-v1`): its DHT target is `SHA1(key || "p2p-peer-v1")` (BEP 44). The salt
//!   keeps the item apart from any other use of the same key on the DHT, and versions it.
//! - **What** (the item's `v`, at most [`MAX_VALUE`] bytes, what DHT nodes store): msgpack,
//!   positional, `[1, [[name, transport, [addr, ...], at], ...]]`: the format version (`1`), then
//!   one entry per peer of the key (a user's peers share its key), at most [`MAX_PEERS`]:
//!   its name, its transport (`0` UDP, `1` TCP), 1 to [`MAX_ADDRS`] addresses (each 6 bytes,
//!   IPv4 then the port big-endian, or 18 bytes for IPv6) and `at`, the Unix time in seconds
//!   when that peer last published its entry. Each peer of a key merges its own entry into the
//!   record it reads, keeps the others that were refreshed within [`ENTRY_LIFETIME`], and drops
//!   the oldest when the value would not fit.
//! - **seq**: the Unix time in milliseconds when the record was signed (and always more than
//!   the last seq seen), so that a newer record replaces an older one on every DHT node.
//!
//! Nobody but the key holder can make a record that a DHT node stores or that [`open`]
//! accepts: the signature covers the salt, seq and value (BEP 44), and [`open`] checks it
//! again, with the key asked for, besides every field (a value must be exactly this module's
//! encoding of what it decodes to).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ed25519_dalek::{Signature, VerifyingKey};
use mainline::MutableItem;
use p2p_proto::identity::PublicKey;
use p2p_proto::wire::TransportKind;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The BEP 44 salt of every peer record (scheme and version).
pub(crate) const SALT: &[u8] = b"p2p-peer-v1";
/// The largest value a record may have: what BEP 44 nodes store (the `mainline` crate's nodes
/// refuse more).
pub(crate) const MAX_VALUE: usize = 1000;
/// Most peers (entries) in one key's record.
pub(crate) const MAX_PEERS: usize = 8;
/// Most addresses of one peer in a record.
pub(crate) const MAX_ADDRS: usize = 4;
/// An entry of another peer of the key that was not refreshed for this long (seconds: three
/// republish periods) is left out when a peer publishes the record: its peer is gone.
pub(crate) const ENTRY_LIFETIME: u64 = 3 * 30 * 60;
/// The record format's version, the value's first field.
const VERSION: u8 = 1;

/// One peer of a key, as its record has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordPeer {
    /// Its name (as a tracker would register it).
    pub(crate) name: String,
    /// The transport it listens on.
    pub(crate) transport: TransportKind,
    /// Where it listens, the likeliest first; 1 to [`MAX_ADDRS`].
    pub(crate) addrs: Vec<SocketAddr>,
    /// When it last published its entry (Unix time, seconds).
    pub(crate) at: u64,
}

/// A key's record: its peers, the most recently refreshed first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerRecord {
    /// One entry per peer, 1 to [`MAX_PEERS`], each name once.
    pub(crate) peers: Vec<RecordPeer>,
}

/// A record whose signature and fields were checked, with its sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Signed {
    /// The record.
    pub(crate) record: PeerRecord,
    /// Its BEP 44 sequence number (Unix time in ms when it was signed).
    pub(crate) seq: i64,
}

/// Why a value or an item is not a valid peer record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// Larger than a DHT node stores.
    #[error("the record is {0} bytes, more than the {MAX_VALUE} a DHT node stores")]
    TooLarge(usize),
    /// Not msgpack of a record, or not in its one encoding.
    #[error("the record does not decode as a peer record")]
    Undecodable,
    /// A record of a later format.
    #[error("the record is of a newer format (v{0}): update p2p to read it")]
    Newer(u8),
    /// No peer, or more than [`MAX_PEERS`].
    #[error("the record lists {0} peers (1 to {MAX_PEERS} expected)")]
    PeerCount(usize),
    /// A name that is not a peer name.
    #[error("the record names `{name}`, which is not a peer name: {why}")]
    BadName {
        /// The name.
        name: String,
        /// Why not.
        why: String,
    },
    /// The same name twice.
    #[error("the record names `{0}` twice")]
    DuplicateName(String),
    /// An unknown transport code.
    #[error("the record gives `{name}` an unknown transport (code {code})")]
    Transport {
        /// The peer's name.
        name: String,
        /// The code.
        code: u8,
    },
    /// No address, or more than [`MAX_ADDRS`].
    #[error("the record gives `{name}` {count} addresses (1 to {MAX_ADDRS} expected)")]
    AddressCount {
        /// The peer's name.
        name: String,
        /// How many.
        count: usize,
    },
    /// An address nobody can be reached at (port 0, unspecified, multicast, wrong length).
    #[error("the record gives `{name}` an address nobody can be reached at ({addr})")]
    BadAddress {
        /// The peer's name.
        name: String,
        /// The address, as far as it reads.
        addr: String,
    },
    /// Signed by another key than the one asked for.
    #[error("the record is signed by key {found}, not by the key asked for")]
    WrongKey {
        /// The key that signed it (hex).
        found: String,
    },
    /// Stored under another salt (not a peer record, or another version's).
    #[error("the item is not a peer record (another salt)")]
    WrongSalt,
    /// The signature does not hold.
    #[error("the record's signature does not hold for its key")]
    BadSignature,
    /// A sequence number below 1.
    #[error("the record's sequence number {0} is not positive")]
    BadSeq(i64),
}

/// The value's wire form: `[version, [peer, ...]]`.
#[derive(Serialize, Deserialize)]
struct WireRecord(u8, Vec<WirePeer>);

/// A peer's wire form: `[name, transport, [addr, ...], at]`.
#[derive(Serialize, Deserialize)]
struct WirePeer(String, u8, Vec<ByteBuf>, u64);

impl PeerRecord {
    /// The record's value: msgpack as the [module documentation](self) writes it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let wire = WireRecord(
            VERSION,
            self.peers
                .iter()
                .map(|p| {
                    WirePeer(
                        p.name.clone(),
                        transport_code(p.transport),
                        p.addrs
                            .iter()
                            .map(|a| ByteBuf::from(addr_bytes(a)))
                            .collect(),
                        p.at,
                    )
                })
                .collect(),
        );
        rmp_serde::to_vec(&wire).expect("encoding to a Vec never fails")
    }

    /// Reads a value, checking every field; the size first, then that the bytes are exactly
    /// the encoding of what they decode to.
    pub(crate) fn decode(value: &[u8]) -> Result<PeerRecord, RecordError> {
        if value.len() > MAX_VALUE {
            return Err(RecordError::TooLarge(value.len()));
        }
        // The version alone first: a later format may change everything after it.
        if let Some(version) = peek_version(value) {
            if version > VERSION {
                return Err(RecordError::Newer(version));
            }
        }
        let wire: WireRecord =
            rmp_serde::from_slice(value).map_err(|_| RecordError::Undecodable)?;
        if wire.0 != VERSION {
            return Err(RecordError::Undecodable);
        }
        if wire.1.is_empty() || wire.1.len() > MAX_PEERS {
            return Err(RecordError::PeerCount(wire.1.len()));
        }
        let mut peers: Vec<RecordPeer> = Vec::with_capacity(wire.1.len());
        for WirePeer(name, code, addrs, at) in wire.1 {
            if let Err(e) = p2p_proto::tracker::validate_name(&name) {
                return Err(RecordError::BadName {
                    why: e.to_string(),
                    name,
                });
            }
            if peers.iter().any(|p| p.name == name) {
                return Err(RecordError::DuplicateName(name));
            }
            let Some(transport) = transport_of(code) else {
                return Err(RecordError::Transport { name, code });
            };
            if addrs.is_empty() || addrs.len() > MAX_ADDRS {
                return Err(RecordError::AddressCount {
                    count: addrs.len(),
                    name,
                });
            }
            let mut parsed = Vec::with_capacity(addrs.len());
            for raw in &addrs {
                match addr_of(raw).filter(reachable) {
                    Some(a) => parsed.push(a),
                    None => {
                        return Err(RecordError::BadAddress {
                            addr: addr_of(raw)
                                .map_or_else(|| format!("{} bytes", raw.len()), |a| a.to_string()),
                            name,
                        })
                    }
                }
            }
            peers.push(RecordPeer {
                name,
                transport,
                addrs: parsed,
                at,
            });
        }
        let record = PeerRecord { peers };
        if record.encode() != value {
            return Err(RecordError::Undecodable);
        }
        Ok(record)
    }
}

/// The version of a value that starts as a record does (an array, then a small integer).
fn peek_version(value: &[u8]) -> Option<u8> {
    match value {
        // fixarray (0x90..=0x9f), then a positive fixint.
        [0x90..=0x9f, v @ 0x00..=0x7f, ..] => Some(*v),
        _ => None,
    }
}

/// The DHT target of the record of `key`: `SHA1(key || SALT)`.
pub(crate) fn target(key: &PublicKey) -> mainline::Id {
    MutableItem::target_from_key(key, Some(SALT))
}

/// The bytes BEP 44 signs for a record of sequence number `seq` and value `value`: the
/// bencoded `salt`, `seq` and `v` entries, without the outer dictionary.
pub(crate) fn signable(seq: i64, value: &[u8]) -> Vec<u8> {
    let mut out = format!("4:salt{}:", SALT.len()).into_bytes();
    out.extend_from_slice(SALT);
    out.extend_from_slice(format!("3:seqi{seq}e1:v{}:", value.len()).as_bytes());
    out.extend_from_slice(value);
    out
}

/// The record `record` as a mutable item of sequence number `seq`, signed with the identity
/// key whose secret is `secret`. Fails only when the value is too large.
pub(crate) fn seal(
    secret: [u8; 32],
    record: &PeerRecord,
    seq: i64,
) -> Result<MutableItem, RecordError> {
    let value = record.encode();
    if value.len() > MAX_VALUE {
        return Err(RecordError::TooLarge(value.len()));
    }
    let signer = mainline::SigningKey::from_bytes(&secret);
    Ok(MutableItem::new(signer, &value, seq, Some(SALT)))
}

/// The record an item from the DHT carries, if it is the record of `key`: the key, the salt,
/// the target, the signature (checked here, whatever the DHT node checked), the seq and
/// every field of the value.
pub(crate) fn open(item: &MutableItem, key: &PublicKey) -> Result<Signed, RecordError> {
    if item.key() != key {
        return Err(RecordError::WrongKey {
            found: hex(item.key()),
        });
    }
    if item.salt() != Some(SALT) || *item.target() != target(key) {
        return Err(RecordError::WrongSalt);
    }
    let verifying = VerifyingKey::from_bytes(key).map_err(|_| RecordError::BadSignature)?;
    verifying
        .verify_strict(
            &signable(item.seq(), item.value()),
            &Signature::from_bytes(item.signature()),
        )
        .map_err(|_| RecordError::BadSignature)?;
    if item.seq() < 1 {
        return Err(RecordError::BadSeq(item.seq()));
    }
    Ok(Signed {
        record: PeerRecord::decode(item.value())?,
        seq: item.seq(),
    })
}

/// The record a peer publishes: its own entry `me` first, then the entries of `current` (the
/// key's record as last read, if any) of other names that were refreshed within
/// [`ENTRY_LIFETIME`] of `now` (Unix seconds), the most recent first, as many as fit in
/// [`MAX_PEERS`] and [`MAX_VALUE`].
pub(crate) fn merged(current: Option<&PeerRecord>, me: RecordPeer, now: u64) -> PeerRecord {
    let mut others: Vec<RecordPeer> = current
        .map(|c| c.peers.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|p| p.name != me.name && now.saturating_sub(p.at) <= ENTRY_LIFETIME)
        .cloned()
        .collect();
    others.sort_by_key(|p| std::cmp::Reverse(p.at));
    let mut peers = vec![me];
    peers.extend(others.into_iter().take(MAX_PEERS - 1));
    let mut record = PeerRecord { peers };
    while record.peers.len() > 1 && record.encode().len() > MAX_VALUE {
        record.peers.pop();
    }
    record
}

/// Why a record does not say which peer to reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PickError {
    /// The name asked for is not in the record.
    #[error("the record of key {key} names {}, not `{asked}`", names_list(.names))]
    NotNamed {
        /// The key (hex).
        key: String,
        /// The name asked for.
        asked: String,
        /// The names the record has.
        names: Vec<String>,
    },
    /// No name asked for, and the record has several.
    #[error(
        "the record of key {key} names {} peers ({}): say which, as NAME@{key}",
        .names.len(),
        names_list(.names)
    )]
    Several {
        /// The key (hex).
        key: String,
        /// The names the record has.
        names: Vec<String>,
    },
}

/// `` `a`, `b` `` for messages.
fn names_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The peer of `record` (the record of `key`) named `name`, or its only peer when no name is
/// given.
pub(crate) fn pick<'a>(
    record: &'a PeerRecord,
    key: &PublicKey,
    name: Option<&str>,
) -> Result<&'a RecordPeer, PickError> {
    let names = || record.peers.iter().map(|p| p.name.clone()).collect();
    match name {
        Some(asked) => record
            .peers
            .iter()
            .find(|p| p.name == asked)
            .ok_or_else(|| PickError::NotNamed {
                key: hex(key),
                asked: asked.to_string(),
                names: names(),
            }),
        None => match record.peers.as_slice() {
            [only] => Ok(only),
            _ => Err(PickError::Several {
                key: hex(key),
                names: names(),
            }),
        },
    }
}

/// The addresses a peer listening on `listen` publishes: that address when it is a
/// specific one; on every interface (`0.0.0.0`, `[::]`), the address DHT nodes see this
/// host at (`public`, if known) and then the interfaces' own addresses of the listening
/// family (`interfaces`; `[::]` takes both families), the loopback only when there is
/// nothing else; each once, at most [`MAX_ADDRS`].
pub(crate) fn addresses_for(
    listen: SocketAddr,
    public: Option<Ipv4Addr>,
    interfaces: &[IpAddr],
) -> Vec<SocketAddr> {
    let port = listen.port();
    if !listen.ip().is_unspecified() {
        return vec![listen];
    }
    let wanted = |ip: &IpAddr| match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => listen.is_ipv6() && !is_link_local_v6(v6),
    };
    let mut ips: Vec<IpAddr> = public.map(IpAddr::V4).into_iter().collect();
    let usable = |ip: &&IpAddr| {
        wanted(ip) && !ip.is_loopback() && !ip.is_unspecified() && !is_link_local_v4(ip)
    };
    ips.extend(interfaces.iter().filter(usable));
    if ips.is_empty() {
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        if !out.contains(&addr) && out.len() < MAX_ADDRS {
            out.push(addr);
        }
    }
    out
}

fn is_link_local_v4(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_link_local())
}

fn is_link_local_v6(ip: &Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

/// Whether a peer could be reached at `addr`: a port, and a unicast address.
fn reachable(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

fn transport_code(t: TransportKind) -> u8 {
    match t {
        TransportKind::Udp => 0,
        TransportKind::Tcp => 1,
    }
}

fn transport_of(code: u8) -> Option<TransportKind> {
    match code {
        0 => Some(TransportKind::Udp),
        1 => Some(TransportKind::Tcp),
        _ => None,
    }
}

/// An address as a record carries it: the IP's bytes, then the port big-endian.
fn addr_bytes(addr: &SocketAddr) -> Vec<u8> {
    let mut out = match addr.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// An address from a record's bytes (6 or 18 of them).
fn addr_of(raw: &[u8]) -> Option<SocketAddr> {
    let (ip, port): (IpAddr, &[u8]) = match raw.len() {
        6 => (<[u8; 4]>::try_from(&raw[..4]).ok()?.into(), &raw[4..]),
        18 => (<[u8; 16]>::try_from(&raw[..16]).ok()?.into(), &raw[16..]),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

/// A key as users write it: 64 hex digits.
pub(crate) fn hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key written as 64 hex digits, if `text` is one.
pub(crate) fn parse_key(text: &str) -> Option<PublicKey> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// A peer named by its key, `KEY` or `NAME@KEY` (KEY: 64 hex digits): the name, if given, and
/// the key; `None` when `text` is neither.
pub(crate) fn parse_peer_key(text: &str) -> Option<(Option<String>, PublicKey)> {
    match text.rsplit_once('@') {
        Some((name, key)) if !name.is_empty() => Some((Some(name.to_string()), parse_key(key)?)),
        Some(_) => None,
        None => Some((None, parse_key(text)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(at: u64) -> RecordPeer {
        RecordPeer {
            name: "alice".into(),
            transport: TransportKind::Udp,
            addrs: vec![
                "192.0.2.7:7000".parse().unwrap(),
                "[2001:db8::1]:7000".parse().unwrap(),
            ],
            at,
        }
    }

    fn named(name: &str, at: u64) -> RecordPeer {
        RecordPeer {
            name: name.into(),
            at,
            ..alice(at)
        }
    }

    const SECRET: [u8; 32] = [7; 32];

    fn key_of(secret: [u8; 32]) -> PublicKey {
        p2p_proto::identity::Identity::from_secret(secret).public()
    }

    /// The encoding is a contract between builds: this vector pins it.
    #[test]
    fn encoding_is_pinned_and_round_trips() {
        let record = PeerRecord {
            peers: vec![RecordPeer {
                name: "al".into(),
                transport: TransportKind::Tcp,
                addrs: vec!["1.2.3.4:258".parse().unwrap()],
                at: 5,
            }],
        };
        let value = record.encode();
        // [1, [["al", 1, [bin(1.2.3.4 0x0102)], 5]]]
        assert_eq!(
            value,
            [
                0x92, 0x01, 0x91, 0x94, 0xa2, b'a', b'l', 0x01, 0x91, 0xc4, 0x06, 1, 2, 3, 4, 1, 2,
                0x05
            ]
        );
        assert_eq!(PeerRecord::decode(&value), Ok(record));
        let two = PeerRecord {
            peers: vec![alice(1_700_000_000), named("bob", 3)],
        };
        assert_eq!(PeerRecord::decode(&two.encode()), Ok(two));
    }

    #[test]
    fn bad_fields_are_refused_with_what_is_wrong() {
        let bad = |peer: RecordPeer| PeerRecord::decode(&PeerRecord { peers: vec![peer] }.encode());
        assert!(matches!(
            bad(named("no spaces", 1)),
            Err(RecordError::BadName { .. })
        ));
        let mut no_port = alice(1);
        no_port.addrs = vec!["192.0.2.1:0".parse().unwrap()];
        assert!(matches!(bad(no_port), Err(RecordError::BadAddress { .. })));
        let mut anywhere = alice(1);
        anywhere.addrs = vec!["0.0.0.0:7000".parse().unwrap()];
        assert!(matches!(bad(anywhere), Err(RecordError::BadAddress { .. })));
        let mut none = alice(1);
        none.addrs.clear();
        assert!(matches!(
            bad(none),
            Err(RecordError::AddressCount { count: 0, .. })
        ));
        let twice = PeerRecord {
            peers: vec![alice(1), alice(2)],
        };
        assert!(matches!(
            PeerRecord::decode(&twice.encode()),
            Err(RecordError::DuplicateName(_))
        ));
        assert_eq!(
            PeerRecord::decode(&PeerRecord { peers: vec![] }.encode()),
            Err(RecordError::PeerCount(0))
        );
        assert_eq!(
            PeerRecord::decode(&[0u8; MAX_VALUE + 1]),
            Err(RecordError::TooLarge(MAX_VALUE + 1))
        );
        assert_eq!(PeerRecord::decode(b"junk"), Err(RecordError::Undecodable));
        // A later version says so.
        let mut newer = PeerRecord {
            peers: vec![alice(1)],
        }
        .encode();
        newer[1] = 2;
        assert_eq!(PeerRecord::decode(&newer), Err(RecordError::Newer(2)));
        // Trailing bytes: not the one encoding.
        let mut trailing = PeerRecord {
            peers: vec![alice(1)],
        }
        .encode();
        trailing.push(0);
        assert_eq!(PeerRecord::decode(&trailing), Err(RecordError::Undecodable));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let good = PeerRecord {
            peers: vec![alice(9), named("bob", 8)],
        }
        .encode();
        for i in 0..good.len() {
            for flip in [1u8, 0x80, 0xff] {
                let mut v = good.clone();
                v[i] ^= flip;
                let _ = PeerRecord::decode(&v);
                let _ = PeerRecord::decode(&v[..i]);
            }
        }
    }

    #[test]
    fn a_sealed_record_opens_with_its_key_only() {
        let record = PeerRecord {
            peers: vec![alice(1)],
        };
        let item = seal(SECRET, &record, 42).unwrap();
        assert_eq!(*item.target(), target(&key_of(SECRET)));
        let opened = open(&item, &key_of(SECRET)).unwrap();
        assert_eq!((opened.record, opened.seq), (record.clone(), 42));
        // Our signable bytes are the crate's (BEP 44's).
        let mallory = key_of([8; 32]);
        assert!(matches!(
            open(&item, &mallory),
            Err(RecordError::WrongKey { .. })
        ));
    }

    /// A record that claims alice's key but is signed by another key (mallory's) is refused;
    /// so is alice's own signature over another value or seq.
    #[test]
    fn a_forged_record_is_refused() {
        let alice_key = key_of(SECRET);
        let record = PeerRecord {
            peers: vec![alice(1)],
        };
        let by_mallory = seal([8; 32], &record, 42).unwrap();
        let forged = MutableItem::new_signed_unchecked(
            alice_key,
            *by_mallory.signature(),
            by_mallory.value(),
            42,
            Some(SALT),
        );
        assert_eq!(open(&forged, &alice_key), Err(RecordError::BadSignature));
        let real = seal(SECRET, &record, 42).unwrap();
        let replayed_seq = MutableItem::new_signed_unchecked(
            alice_key,
            *real.signature(),
            real.value(),
            43,
            Some(SALT),
        );
        assert_eq!(
            open(&replayed_seq, &alice_key),
            Err(RecordError::BadSignature)
        );
        let other_salt = MutableItem::new(
            mainline::SigningKey::from_bytes(&SECRET),
            real.value(),
            42,
            Some(b"another"),
        );
        assert_eq!(open(&other_salt, &alice_key), Err(RecordError::WrongSalt));
        // Signed properly over a value that is not a record: the fields are checked too.
        let junk = MutableItem::new(
            mainline::SigningKey::from_bytes(&SECRET),
            b"junk",
            3,
            Some(SALT),
        );
        assert_eq!(open(&junk, &alice_key), Err(RecordError::Undecodable));
    }

    #[test]
    fn merging_replaces_its_own_entry_and_drops_stale_ones() {
        let now = 1_000_000;
        let current = PeerRecord {
            peers: vec![
                named("alice", now - 100),
                named("bob", now - 10),
                named("gone", now - ENTRY_LIFETIME - 1),
                named("carol", now - 50),
            ],
        };
        let me = named("alice", now);
        let record = merged(Some(&current), me.clone(), now);
        let names: Vec<&str> = record.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert_eq!(record.peers[0], me);
        assert_eq!(merged(None, me.clone(), now).peers, [me]);
    }

    #[test]
    fn merging_keeps_within_the_bounds() {
        let now = 1_000_000;
        let long = |i: usize| format!("{i}{}", "n".repeat(60));
        let peers: Vec<RecordPeer> = (0..20)
            .map(|i| {
                let mut p = named(&long(i), now - i as u64);
                p.addrs = (0..MAX_ADDRS as u16)
                    .map(|k| SocketAddr::new("2001:db8::1".parse().unwrap(), 7000 + k))
                    .collect();
                p
            })
            .collect();
        let current = PeerRecord { peers };
        let record = merged(Some(&current), named("me", now), now);
        assert!(record.peers.len() <= MAX_PEERS);
        assert!(record.peers.len() > 1);
        let value = record.encode();
        assert!(value.len() <= MAX_VALUE, "{}", value.len());
        assert_eq!(PeerRecord::decode(&value), Ok(record.clone()));
        // The most recent others are the ones kept.
        assert_eq!(record.peers[1].name, long(0));
    }

    #[test]
    fn picking_a_peer_by_name_or_the_only_one() {
        let key = key_of(SECRET);
        let one = PeerRecord {
            peers: vec![alice(1)],
        };
        assert_eq!(pick(&one, &key, None).unwrap().name, "alice");
        assert_eq!(pick(&one, &key, Some("alice")).unwrap().name, "alice");
        let e = pick(&one, &key, Some("bob")).unwrap_err();
        assert!(matches!(e, PickError::NotNamed { .. }));
        assert!(e.to_string().contains("names `alice`, not `bob`"), "{e}");
        let two = PeerRecord {
            peers: vec![alice(1), named("bob", 1)],
        };
        assert_eq!(pick(&two, &key, Some("bob")).unwrap().name, "bob");
        let e = pick(&two, &key, None).unwrap_err();
        assert!(e.to_string().contains("as NAME@"), "{e}");
    }

    #[test]
    fn addresses_follow_the_listening_address() {
        let here: SocketAddr = "192.0.2.5:7000".parse().unwrap();
        assert_eq!(addresses_for(here, None, &[]), [here]);
        let ifs: Vec<IpAddr> = [
            "127.0.0.1",
            "10.0.0.2",
            "169.254.1.1",
            "2001:db8::2",
            "fe80::1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let any4: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let public = Some(Ipv4Addr::new(203, 0, 113, 9));
        let got: Vec<String> = addresses_for(any4, public, &ifs)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["203.0.113.9:7000", "10.0.0.2:7000"]);
        let any6: SocketAddr = "[::]:7000".parse().unwrap();
        let got: Vec<String> = addresses_for(any6, None, &ifs)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.2:7000", "[2001:db8::2]:7000"]);
        // Nothing but the loopback: the loopback.
        let lo: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        assert_eq!(
            addresses_for(any4, None, &lo),
            ["127.0.0.1:7000".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn keys_parse_alone_or_with_a_name() {
        let key = key_of(SECRET);
        let text = hex(&key);
        assert_eq!(parse_key(&text), Some(key));
        assert_eq!(parse_key(&text[..63]), None);
        assert_eq!(parse_peer_key(&text), Some((None, key)));
        assert_eq!(
            parse_peer_key(&format!("alice@{text}")),
            Some((Some("alice".into()), key))
        );
        assert_eq!(parse_peer_key(&format!("@{text}")), None);
        assert_eq!(parse_peer_key("alice"), None);
        assert_eq!(parse_peer_key("alice@bob"), None);
    }
}
