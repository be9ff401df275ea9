//! `Registry`: the tracker's table of live peers, a plain state machine with `now` passed in.
//!
//! Each entry holds a `valid_until`; heartbeats push it forward, [`Registry::expire`] drops the
//! entries whose time has passed. The peer's IP always comes from the source address the
//! transport reports; only the port comes from the message.
//!
//! The registry also keeps the content its peers announced (see [`super::holders`]): a peer's
//! hashes live exactly as long as its entry.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::holders::{Holders, HoldersConfig};
use crate::identity::PublicKey;
use crate::wire::{ContentHash, PeerInfo, RequestId, TransportKind, MAX_NAME_LEN};

/// Limits and timings of a [`Registry`].
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// How long an entry lives without a heartbeat.
    pub ttl: Duration,
    /// Heartbeat period suggested to peers.
    pub heartbeat: Duration,
    /// Most live entries; registrations beyond it are refused.
    pub max_peers: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            ttl: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            max_peers: 10_000,
        }
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum RegisterError {
    /// Another live peer holds the name.
    #[error("name `{name}` is already used by a live peer at {holder}; pick another name or wait until that peer leaves")]
    NameTaken {
        /// The wanted name.
        name: String,
        /// Where its holder listens.
        holder: SocketAddr,
    },
    /// The name is empty, too long or has spaces or control characters.
    #[error("invalid name: {0}")]
    BadName(String),
    /// Port 0 cannot be reached.
    #[error("port 0 is not a listening port")]
    BadPort,
    /// The table is full.
    #[error("tracker is full ({0} peers); try again later")]
    Full(usize),
    /// Too many new names registered from one network (a /24, or a /48 in IPv6) lately.
    #[error("too many new names registered from your network lately; try again in a minute")]
    TooManyNew,
    /// The name is bound to another identity key.
    #[error("name `{name}` belongs to another peer (key {key}); pick another name")]
    NameBound {
        /// The wanted name.
        name: String,
        /// The fingerprint of the key it is bound to.
        key: String,
    },
}

/// How long a name stays bound to the identity key that last proved it
/// ([`crate::identity`]), registered or not.
pub const BINDING_KEEP: Duration = Duration::from_secs(24 * 3600);

/// A name's identity key, and when it last proved it.
#[derive(Clone, Debug)]
struct Binding {
    key: PublicKey,
    last: Instant,
}

/// Why an announcement was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum AnnounceError {
    /// No live peer holds the name.
    #[error("`{0}` is not registered here (or its registration lapsed): register, then announce")]
    NotRegistered(String),
    /// The name is registered from another address: only its holder announces for it.
    #[error("`{0}` is registered from another address: only that address may announce for it")]
    NotFromHolder(String),
    /// A later batch, but the tracker holds no announcement of that peer (it forgot it since
    /// the first batch).
    #[error("no announcement of `{0}` is in progress: send its first batch again")]
    NotStarted(String),
}

/// Holders listed per `Holders` page: a page of peers with the longest names and IPv6
/// addresses still fits [`CONTROL_BUDGET`](crate::wire::CONTROL_BUDGET), so that page `n` is
/// found without cutting the pages before it.
pub const HOLDERS_PER_PAGE: usize = 9;

/// Checks that `name` can be registered and typed in the menu: 1 to [`MAX_NAME_LEN`] bytes
/// of Unicode letters, digits and combining marks (`héllo`, `ανθή`, `名前`, `नमस्ते`) and `-`,
/// `_`, `.`, not starting with `.` or a mark. Refused: control, format (bidi overrides, zero-width) and space characters,
/// names not in NFC form (normalise what a user typed with
/// [`unicode_normalization::UnicodeNormalization::nfc`] first, so that one name has one
/// spelling), and letters of several scripts mixed (`pаypal` with a Cyrillic `а`), which
/// could pass for another peer's name.
pub fn validate_name(name: &str) -> Result<(), RegisterError> {
    use unicode_normalization::is_nfc;
    use unicode_security::MixedScript;

    if name.is_empty() {
        return Err(RegisterError::BadName("the name is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(RegisterError::BadName(format!(
            "the name is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    // Combining marks (a Devanagari virama, a vowel sign) after the first character, as the
    // scripts that need them write names.
    let allowed = |(i, c): (usize, char)| {
        c.is_alphanumeric()
            || matches!(c, '-' | '_' | '.')
            || (i > 0 && unicode_normalization::char::is_combining_mark(c))
    };
    if !name.chars().enumerate().all(allowed) {
        return Err(RegisterError::BadName(
            "use only letters, digits, `-`, `_` and `.`".into(),
        ));
    }
    if name.starts_with('.') {
        return Err(RegisterError::BadName(
            "the name may not start with `.`".into(),
        ));
    }
    if !is_nfc(name) {
        return Err(RegisterError::BadName(
            "the name is not in Unicode normal form C (NFC)".into(),
        ));
    }
    if !name.is_single_script() {
        return Err(RegisterError::BadName(
            "the name mixes letters of several scripts, which could pass for another name".into(),
        ));
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct Entry {
    addr: SocketAddr,
    /// Where its last `Register` or `Heartbeat` came from: behind a NAT, the NAT's public
    /// mapping of the peer's socket (what hole punching aims at).
    seen: SocketAddr,
    transport: TransportKind,
    valid_until: Instant,
}

/// The tracker's table of live peers.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    peers: BTreeMap<String, Entry>,
    /// What the peers announced.
    holders: Holders,
    /// Names bound to identity keys, for [`BINDING_KEEP`] after their last proof; at most
    /// four times `max_peers` (the oldest forgotten first).
    bindings: HashMap<String, Binding>,
    /// See [`Registry::bindings_changed`].
    bindings_changed: u64,
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Registry {
            config,
            peers: BTreeMap::new(),
            holders: Holders::new(HoldersConfig::default()),
            bindings: HashMap::new(),
            bindings_changed: 0,
        }
    }

    /// With the content index bounded by `holders` (instead of [`HoldersConfig::default`]).
    pub fn with_holders(mut self, holders: HoldersConfig) -> Self {
        debug_assert_eq!(self.holders.entries(), 0, "set before any announcement");
        self.holders = Holders::new(holders);
        self
    }

    /// The bounds of the content index.
    pub fn holders_config(&self) -> &HoldersConfig {
        self.holders.config()
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Registers or refreshes `name` for the peer whose message came from `source`, listening
    /// on `port` over `transport`. Returns `true` when the entry is new.
    pub fn register(
        &mut self,
        now: Instant,
        name: &str,
        source: SocketAddr,
        port: u16,
        transport: TransportKind,
    ) -> Result<bool, RegisterError> {
        validate_name(name)?;
        if port == 0 {
            return Err(RegisterError::BadPort);
        }
        let addr = SocketAddr::new(source.ip(), port);
        let valid_until = now + self.config.ttl;
        if let Some(entry) = self.peers.get_mut(name) {
            if entry.valid_until > now && (entry.addr != addr || entry.transport != transport) {
                return Err(RegisterError::NameTaken {
                    name: name.to_string(),
                    holder: entry.addr,
                });
            }
            let lapsed = entry.valid_until <= now;
            *entry = Entry {
                addr,
                seen: source,
                transport,
                valid_until,
            };
            if lapsed {
                // Gone as far as anyone could tell (expiry just had not run): what it
                // announced went with it, and is not handed to whoever has the name now.
                self.holders.forget(name);
            }
            return Ok(false);
        }
        if self.peers.len() >= self.config.max_peers {
            self.expire(now);
            if self.peers.len() >= self.config.max_peers {
                return Err(RegisterError::Full(self.config.max_peers));
            }
        }
        self.peers.insert(
            name.to_string(),
            Entry {
                addr,
                seen: source,
                transport,
                valid_until,
            },
        );
        Ok(true)
    }

    /// [`Registry::register`] of a request signed by identity `key` (`None`: unsigned). A
    /// name bound to a key is refused to any other key and to unsigned requests. With
    /// `take_over` (a `Register`, not a `Heartbeat`), its own key takes it at once from
    /// another IP (the peer moved to another network): the old entry gives way, and the old
    /// address's next heartbeat is refused. From the same IP (a second process on the same
    /// machine) the name stays taken while its entry lives, as for unsigned peers. An unbound
    /// name is bound to the first key that registers it.
    #[allow(clippy::too_many_arguments)]
    pub fn register_as(
        &mut self,
        now: Instant,
        name: &str,
        source: SocketAddr,
        port: u16,
        transport: TransportKind,
        key: Option<PublicKey>,
        take_over: bool,
    ) -> Result<bool, RegisterError> {
        validate_name(name)?;
        let owner = self.check_binding(now, name, key.as_ref())?;
        if owner && take_over {
            let moved = self
                .peers
                .get(name)
                .is_some_and(|e| e.addr.ip() != source.ip());
            if moved {
                self.peers.remove(name);
            }
        }
        let fresh = self.register(now, name, source, port, transport)?;
        if let Some(key) = key {
            self.bind(now, name, key);
        }
        Ok(fresh)
    }

    /// Whether `key` owns `name` (`Ok(false)`: the name is bound to no key, or unsigned
    /// requests are fine for it); an error when the name is bound to another key, or the
    /// request is unsigned and the name is bound.
    fn check_binding(
        &mut self,
        now: Instant,
        name: &str,
        key: Option<&PublicKey>,
    ) -> Result<bool, RegisterError> {
        if self
            .bindings
            .get(name)
            .is_some_and(|b| now.saturating_duration_since(b.last) >= BINDING_KEEP)
        {
            self.bindings.remove(name);
        }
        match (self.bindings.get(name), key) {
            (None, _) => Ok(false),
            (Some(b), Some(key)) if b.key == *key => Ok(true),
            (Some(b), _) => Err(RegisterError::NameBound {
                name: name.to_string(),
                key: crate::identity::fingerprint(&b.key),
            }),
        }
    }

    /// Binds `name` to `key` (or refreshes the binding), forgetting the oldest binding when
    /// the table is full.
    fn bind(&mut self, now: Instant, name: &str, key: PublicKey) {
        let cap = self.config.max_peers.saturating_mul(4).max(16);
        if !self.bindings.contains_key(name) && self.bindings.len() >= cap {
            if let Some(oldest) = self
                .bindings
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(n, _)| n.clone())
            {
                self.bindings.remove(&oldest);
            }
        }
        let new = self.bindings.get(name).is_none_or(|b| b.key != key);
        self.bindings
            .insert(name.to_string(), Binding { key, last: now });
        if new {
            self.bindings_changed += 1;
        }
    }

    /// Every name bound to a key, with its key and how long ago it last proved it (for a
    /// tracker that keeps its bindings across restarts: see [`Registry::restore_binding`]).
    pub fn bindings(&self, now: Instant) -> Vec<(String, PublicKey, Duration)> {
        self.bindings
            .iter()
            .map(|(name, b)| (name.clone(), b.key, now.saturating_duration_since(b.last)))
            .filter(|(_, _, age)| *age < BINDING_KEEP)
            .collect()
    }

    /// How many times a name was bound to a new key (or another key) since this registry
    /// started: a keeper of [`Registry::bindings`] saves them again when this changes.
    pub fn bindings_changed(&self) -> u64 {
        self.bindings_changed
    }

    /// Binds `name` to `key` as proven `age` ago (a binding saved before a restart): refused
    /// (`false`) for a name that is not valid, an age past [`BINDING_KEEP`], or a name
    /// already bound here since.
    pub fn restore_binding(
        &mut self,
        now: Instant,
        name: &str,
        key: PublicKey,
        age: Duration,
    ) -> bool {
        let Some(last) = now.checked_sub(age) else {
            return false;
        };
        if age >= BINDING_KEEP || validate_name(name).is_err() || self.bindings.contains_key(name) {
            return false;
        }
        self.bind(last, name, key);
        true
    }

    /// The identity key `name` is bound to, if any.
    pub fn key_of(&self, name: &str) -> Option<PublicKey> {
        self.bindings.get(name).map(|b| b.key)
    }

    /// [`Registry::unregister`] of a request signed by `key` (`None`: unsigned): a name bound
    /// to a key leaves only on that key's request (from any address); others as before,
    /// only from the IP that registered them. The binding stays.
    pub fn unregister_as(
        &mut self,
        now: Instant,
        name: &str,
        source_ip: IpAddr,
        key: Option<PublicKey>,
    ) -> bool {
        match self.check_binding(now, name, key.as_ref()) {
            Ok(true) => {
                let gone = self.peers.remove(name).is_some();
                if gone {
                    self.holders.forget(name);
                }
                gone
            }
            Ok(false) => self.unregister(name, source_ip),
            Err(_) => false,
        }
    }

    /// Whether `name` is held by a live peer at `now`.
    pub fn holds(&self, name: &str, now: Instant) -> bool {
        self.peers.get(name).is_some_and(|e| e.valid_until > now)
    }

    /// Removes `name` if the request comes from the IP that registered it. Returns whether an
    /// entry was removed.
    pub fn unregister(&mut self, name: &str, source_ip: IpAddr) -> bool {
        match self.peers.get(name) {
            Some(entry) if entry.addr.ip() == source_ip => {
                self.peers.remove(name);
                self.holders.forget(name);
                true
            }
            _ => false,
        }
    }

    /// Drops every entry whose time has passed and returns their names.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.peers.retain(|name, e| {
            let live = e.valid_until > now;
            if !live {
                gone.push(name.clone());
            }
            live
        });
        for name in &gone {
            self.holders.forget(name);
        }
        gone
    }

    /// Takes one batch of an announcement by `name` (`first`: it starts a new one, which
    /// replaces what `name` announced before; `request` is its request id) that came from
    /// `source`: only the address the live peer `name` registers from (its last `Register` or
    /// `Heartbeat` came from there) may announce for it. Returns the hashes kept for it now:
    /// past [`HoldersConfig::per_peer`] for the peer or [`HoldersConfig::total`] in all, the
    /// rest of the batch is dropped.
    pub fn announce(
        &mut self,
        now: Instant,
        name: &str,
        source: SocketAddr,
        request: RequestId,
        first: bool,
        hashes: &[ContentHash],
    ) -> Result<u32, AnnounceError> {
        match self.peers.get(name) {
            Some(e) if e.valid_until > now && e.seen == source => {}
            Some(e) if e.valid_until > now => {
                return Err(AnnounceError::NotFromHolder(name.to_string()))
            }
            _ => return Err(AnnounceError::NotRegistered(name.to_string())),
        }
        self.holders
            .announce(name, request, first, hashes)
            .ok_or_else(|| AnnounceError::NotStarted(name.to_string()))
    }

    /// The hashes kept for `name` (`None`: it announced nothing since it registered, or the
    /// tracker forgot it).
    pub fn held(&self, name: &str) -> Option<u32> {
        self.holders.held(name)
    }

    /// (peer, hash) entries in the content index.
    pub fn hash_entries(&self) -> usize {
        self.holders.entries()
    }

    /// Page `page` of the live peers that announced `hash`, [`HOLDERS_PER_PAGE`] entries of
    /// the holders list a page (fewer peers when some of those are no longer live), and the
    /// number of pages (at least 1: an unknown hash has one empty page). `None` past the
    /// last page. Each peer is at most once in the list; a walk through the pages while
    /// peers leave may miss one that moved onto a page already seen, but never sees one
    /// twice (newcomers are added at the end).
    pub fn holders(
        &self,
        now: Instant,
        hash: &ContentHash,
        page: u32,
    ) -> (u32, Option<Vec<PeerInfo>>) {
        let names = self.holders.of(hash);
        let pages = names.len().div_ceil(HOLDERS_PER_PAGE).max(1);
        let pages = u32::try_from(pages).unwrap_or(u32::MAX);
        if page >= pages {
            return (pages, None);
        }
        let start = page as usize * HOLDERS_PER_PAGE;
        let end = (start + HOLDERS_PER_PAGE).min(names.len());
        let peers = names
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .filter_map(|name| {
                let e = self.peers.get(&**name).filter(|e| e.valid_until > now)?;
                Some(PeerInfo {
                    name: name.clone(),
                    addr: e.addr,
                    transport: e.transport,
                })
            })
            .collect();
        (pages, Some(peers))
    }

    /// Live peers, sorted by name.
    pub fn list(&self, now: Instant) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .filter(|(_, e)| e.valid_until > now)
            .map(|(name, e)| PeerInfo {
                name: name.as_str().into(),
                addr: e.addr,
                transport: e.transport,
            })
            .collect()
    }

    /// The live peer `name`, as a listing shows it.
    pub fn live(&self, now: Instant, name: &str) -> Option<PeerInfo> {
        let (name, e) = self.peers.get_key_value(name)?;
        (e.valid_until > now).then(|| PeerInfo {
            name: name.as_str().into(),
            addr: e.addr,
            transport: e.transport,
        })
    }

    /// Where the live peer `name`'s datagrams come from (its NAT's public mapping, if it is
    /// behind one), and over which transport it registered.
    pub fn seen(&self, name: &str, now: Instant) -> Option<(SocketAddr, TransportKind)> {
        self.peers
            .get(name)
            .filter(|e| e.valid_until > now)
            .map(|e| (e.seen, e.transport))
    }

    /// Number of entries held (live or not yet expired by [`Registry::expire`]).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// When the next entry expires, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.peers.values().map(|e| e.valid_until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_any_script_are_accepted() {
        for name in [
            "alice",
            "bob-2",
            "a_b.c",
            "héllo",
            "Zoë",
            "ανθή",
            "Иван",
            "名前",
            "ひらがな漢字",
            "مرحبا",
            "नमस्ते",
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn names_that_could_deceive_or_break_a_terminal_are_refused() {
        let refused = [
            "",
            ".hidden",
            "two words",
            "tab\there",
            "nul\0",
            "esc\u{1b}[31m",
            "bidi\u{202e}evil",
            "zero\u{200b}width",
            "isolate\u{2066}x",
            "bom\u{feff}",
            "nbsp\u{a0}x",
            "e\u{301}",     // `é` decomposed (NFD): not NFC
            "p\u{430}ypal", // a Cyrillic `а` among Latin letters
            "alice!",
            "\u{301}e", // a name that starts with a combining mark
        ];
        for name in refused {
            assert!(
                matches!(validate_name(name), Err(RegisterError::BadName(_))),
                "{name:?} was accepted"
            );
        }
    }

    #[test]
    fn the_limit_is_in_bytes_not_characters() {
        let at_limit = "é".repeat(MAX_NAME_LEN / 2);
        assert_eq!(at_limit.len(), MAX_NAME_LEN);
        assert_eq!(validate_name(&at_limit), Ok(()));
        let over = format!("{at_limit}e");
        assert!(validate_name(&over).is_err());
        let chars = "é".repeat(MAX_NAME_LEN / 2 + 1);
        assert!(
            chars.chars().count() <= MAX_NAME_LEN,
            "fewer chars than bytes"
        );
        assert!(validate_name(&chars).is_err());
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn registry() -> Registry {
        Registry::new(RegistryConfig {
            ttl: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            max_peers: 2,
        })
    }

    #[test]
    fn records_the_source_it_sees_besides_the_claimed_port() {
        let mut r = registry();
        let now = Instant::now();
        // Behind a NAT that mapped port 10001 to 40000.
        r.register(
            now,
            "alice",
            addr("203.0.113.7:40000"),
            10001,
            TransportKind::Udp,
        )
        .unwrap();
        assert_eq!(r.list(now)[0].addr, addr("203.0.113.7:10001"));
        let seen = r.seen("alice", now).unwrap();
        assert_eq!(seen, (addr("203.0.113.7:40000"), TransportKind::Udp));
        // A heartbeat from a new mapping (the NAT's entry expired) updates it.
        r.register(
            now,
            "alice",
            addr("203.0.113.7:40001"),
            10001,
            TransportKind::Udp,
        )
        .unwrap();
        assert_eq!(r.seen("alice", now).unwrap().0, addr("203.0.113.7:40001"));
        assert_eq!(r.seen("alice", now + r.config().ttl), None, "expired");
        assert_eq!(r.seen("bob", now), None);
    }

    #[test]
    fn takes_ip_from_source_and_port_from_message() {
        let mut r = registry();
        let now = Instant::now();
        r.register(now, "a", addr("10.0.0.1:5555"), 10001, TransportKind::Udp)
            .unwrap();
        assert_eq!(r.list(now)[0].addr, addr("10.0.0.1:10001"));
    }

    #[test]
    fn refuses_live_name_from_another_address() {
        let mut r = registry();
        let now = Instant::now();
        r.register(now, "a", addr("10.0.0.1:1"), 10001, TransportKind::Udp)
            .unwrap();
        let err = r
            .register(now, "a", addr("10.0.0.2:1"), 10001, TransportKind::Udp)
            .unwrap_err();
        assert!(matches!(err, RegisterError::NameTaken { .. }));
        // Same address: a refresh, not a conflict.
        assert_eq!(
            r.register(now, "a", addr("10.0.0.1:9"), 10001, TransportKind::Udp),
            Ok(false)
        );
    }

    #[test]
    fn expired_peer_not_listed_and_name_freed() {
        let mut r = registry();
        let now = Instant::now();
        r.register(now, "a", addr("10.0.0.1:1"), 10001, TransportKind::Udp)
            .unwrap();
        let later = now + Duration::from_secs(30);
        assert!(r.list(later).is_empty());
        assert_eq!(r.expire(later), vec!["a".to_string()]);
        assert_eq!(
            r.register(later, "a", addr("10.0.0.2:1"), 10001, TransportKind::Udp),
            Ok(true)
        );
    }

    #[test]
    fn heartbeat_extends_life() {
        let mut r = registry();
        let now = Instant::now();
        r.register(now, "a", addr("10.0.0.1:1"), 1, TransportKind::Tcp)
            .unwrap();
        r.register(
            now + Duration::from_secs(20),
            "a",
            addr("10.0.0.1:2"),
            1,
            TransportKind::Tcp,
        )
        .unwrap();
        assert_eq!(r.list(now + Duration::from_secs(40)).len(), 1);
    }

    #[test]
    fn unregister_only_from_owner_ip() {
        let mut r = registry();
        let now = Instant::now();
        r.register(now, "a", addr("10.0.0.1:1"), 1, TransportKind::Udp)
            .unwrap();
        assert!(!r.unregister("a", addr("10.0.0.9:1").ip()));
        assert!(r.unregister("a", addr("10.0.0.1:7").ip()));
        assert!(r.is_empty());
    }

    #[test]
    fn restored_bindings_hold_until_they_lapse() {
        let mut r = registry();
        let now = Instant::now() + BINDING_KEEP;
        let hour = Duration::from_secs(3600);
        assert!(r.restore_binding(now, "alice", [1; 32], hour));
        assert!(
            !r.restore_binding(now, "alice", [2; 32], hour),
            "already bound"
        );
        assert!(
            !r.restore_binding(now, "bob", [2; 32], BINDING_KEEP),
            "lapsed"
        );
        assert!(
            !r.restore_binding(now, "bad name", [2; 32], hour),
            "not a name"
        );
        assert_eq!(r.key_of("alice"), Some([1; 32]));
        assert_eq!(r.bindings(now), vec![("alice".to_string(), [1; 32], hour)]);
        // It lapses BINDING_KEEP after the proof it was saved with, not after its restoring.
        assert!(r.bindings(now + BINDING_KEEP - hour).is_empty());
        assert_eq!(r.bindings_changed(), 1);
    }

    #[test]
    fn table_is_bounded() {
        let mut r = registry();
        let now = Instant::now();
        r.register(now, "a", addr("10.0.0.1:1"), 1, TransportKind::Udp)
            .unwrap();
        r.register(now, "b", addr("10.0.0.1:1"), 2, TransportKind::Udp)
            .unwrap();
        assert_eq!(
            r.register(now, "c", addr("10.0.0.1:1"), 3, TransportKind::Udp),
            Err(RegisterError::Full(2))
        );
    }

    #[test]
    fn bad_names_refused() {
        let mut r = registry();
        let now = Instant::now();
        for bad in [
            "",
            "a b",
            "x\n",
            &"n".repeat(65),
            "..",
            "a/b",
            ".hidden",
            "a\u{202e}b",
            "e\u{301}",
        ] {
            assert!(matches!(
                r.register(now, bad, addr("10.0.0.1:1"), 1, TransportKind::Udp),
                Err(RegisterError::BadName(_))
            ));
        }
    }

    fn hash(i: u32) -> ContentHash {
        ContentHash::of(&i.to_le_bytes())
    }

    fn hashes(range: std::ops::Range<u32>) -> Vec<ContentHash> {
        range.map(hash).collect()
    }

    fn capped(per_peer: usize, total: usize) -> Registry {
        Registry::new(RegistryConfig {
            max_peers: 100,
            ..RegistryConfig::default()
        })
        .with_holders(HoldersConfig { per_peer, total })
    }

    /// Registers `name` from `source` (its port as the listening one).
    fn join(r: &mut Registry, now: Instant, name: &str, source: SocketAddr) {
        r.register(now, name, source, source.port(), TransportKind::Udp)
            .unwrap();
    }

    #[test]
    fn a_peer_keeps_at_most_its_cap_and_all_peers_the_total() {
        let mut r = capped(50, 120);
        let now = Instant::now();
        let (a, b, c) = (addr("10.0.0.1:1"), addr("10.0.0.2:1"), addr("10.0.0.3:1"));
        join(&mut r, now, "a", a);
        join(&mut r, now, "b", b);
        join(&mut r, now, "c", c);
        // Over the per-peer cap: the rest dropped, not refused; a hash counts once.
        let batch = hashes(0..40);
        assert_eq!(r.announce(now, "a", a, RequestId(1), true, &batch), Ok(40));
        assert_eq!(r.announce(now, "a", a, RequestId(2), false, &batch), Ok(40));
        assert_eq!(
            r.announce(now, "a", a, RequestId(3), false, &hashes(40..80)),
            Ok(50)
        );
        assert_eq!(r.held("a"), Some(50));
        assert_eq!(r.held("b"), None, "announced nothing");
        // The total: 50 + 50 + 20 of c's.
        assert_eq!(
            r.announce(now, "b", b, RequestId(4), true, &hashes(0..60)),
            Ok(50)
        );
        assert_eq!(
            r.announce(now, "c", c, RequestId(5), true, &hashes(0..60)),
            Ok(20)
        );
        assert_eq!(r.hash_entries(), 120);
        r.holders.check();
        // A new announcement replaces the old one (and frees its room).
        assert_eq!(
            r.announce(now, "a", a, RequestId(6), true, &hashes(100..105)),
            Ok(5)
        );
        assert_eq!(r.hash_entries(), 75);
        assert_eq!(r.holders(now, &hash(0), 0).1.unwrap().len(), 2, "b and c");
        r.holders.check();
    }

    /// The first batch sent again (or duplicated on the way) after later ones does not wipe
    /// them; a later batch without a first is refused, so that the peer starts over.
    #[test]
    fn a_first_batch_counts_once_and_later_batches_need_one() {
        let mut r = capped(100, 1000);
        let now = Instant::now();
        let a = addr("10.0.0.1:1");
        join(&mut r, now, "a", a);
        assert_eq!(
            r.announce(now, "a", a, RequestId(9), false, &hashes(0..3)),
            Err(AnnounceError::NotStarted("a".into()))
        );
        assert_eq!(r.held("a"), None);
        r.announce(now, "a", a, RequestId(10), true, &hashes(0..3))
            .unwrap();
        r.announce(now, "a", a, RequestId(11), false, &hashes(3..6))
            .unwrap();
        assert_eq!(
            r.announce(now, "a", a, RequestId(10), true, &hashes(0..3)),
            Ok(6),
            "the same first batch again"
        );
        assert_eq!(
            r.announce(now, "a", a, RequestId(12), true, &hashes(0..3)),
            Ok(3),
            "a new announcement"
        );
    }

    /// Only the address a live peer registers from announces for it.
    #[test]
    fn only_the_registered_address_announces_for_a_name() {
        let mut r = capped(100, 1000);
        let now = Instant::now();
        let a = addr("203.0.113.7:40000");
        join(&mut r, now, "a", a);
        for forger in [addr("198.51.100.9:40000"), addr("203.0.113.7:40001")] {
            assert_eq!(
                r.announce(now, "a", forger, RequestId(1), true, &hashes(0..3)),
                Err(AnnounceError::NotFromHolder("a".into()))
            );
        }
        assert_eq!(
            r.announce(now, "nobody", a, RequestId(1), true, &hashes(0..3)),
            Err(AnnounceError::NotRegistered("nobody".into()))
        );
        assert_eq!(r.hash_entries(), 0);
        let later = now + r.config().ttl;
        assert_eq!(
            r.announce(later, "a", a, RequestId(1), true, &hashes(0..3)),
            Err(AnnounceError::NotRegistered("a".into())),
            "lapsed"
        );
    }

    /// A peer's hashes go with it: expired, unregistered, or its lapsed name taken over
    /// (before expiry ran) by someone else, who must not inherit them.
    #[test]
    fn hashes_go_with_their_peer() {
        let mut r = capped(100, 1000);
        let now = Instant::now();
        let (a, b, c) = (addr("10.0.0.1:1"), addr("10.0.0.2:1"), addr("10.0.0.3:1"));
        join(&mut r, now, "a", a);
        join(&mut r, now, "b", b);
        r.announce(now, "a", a, RequestId(1), true, &hashes(0..10))
            .unwrap();
        r.announce(now, "b", b, RequestId(2), true, &hashes(5..15))
            .unwrap();
        assert_eq!(r.hash_entries(), 20);
        // b keeps heartbeating; a goes silent and is listed no more, even before expiry.
        let later = now + r.config().ttl;
        join(&mut r, later - Duration::from_secs(1), "b", b);
        let live = |r: &Registry, at, h| {
            let (_, peers) = r.holders(at, &hash(h), 0);
            let peers = peers.unwrap();
            peers.iter().map(|p| p.name.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(live(&r, now, 7), vec!["a", "b"]);
        assert_eq!(live(&r, later, 7), vec!["b"]);
        assert_eq!(r.expire(later), vec!["a".to_string()]);
        assert_eq!(r.hash_entries(), 10);
        assert!(live(&r, later, 1).is_empty());
        r.holders.check();
        // Unregistered: gone.
        assert!(r.unregister("b", b.ip()));
        assert_eq!(r.hash_entries(), 0);
        // A lapsed name taken over before expiry ran: the newcomer starts with nothing.
        join(&mut r, later, "a", a);
        r.announce(later, "a", a, RequestId(3), true, &hashes(0..10))
            .unwrap();
        let much_later = later + r.config().ttl;
        join(&mut r, much_later, "a", c);
        assert_eq!(r.held("a"), None);
        assert_eq!(r.hash_entries(), 0);
        assert!(live(&r, much_later, 1).is_empty());
        // The same peer back after lapsing: it announces again too (its heartbeat reply
        // says `None`).
        r.announce(much_later, "a", c, RequestId(4), true, &hashes(0..10))
            .unwrap();
        let ttl = r.config().ttl;
        join(&mut r, much_later + ttl, "a", c);
        assert_eq!(r.held("a"), None);
        r.holders.check();
    }

    /// Pages of holders: each live holder once over all pages, in the order they
    /// announced, O(page) per page; an unknown hash has one empty page.
    #[test]
    fn holders_page_through_each_live_holder_once() {
        let mut r = capped(100, 10_000);
        let now = Instant::now();
        let n = 3 * HOLDERS_PER_PAGE + 2;
        let names: Vec<String> = (0..n).map(|i| format!("p{i:02}")).collect();
        for (i, name) in names.iter().enumerate() {
            let from = SocketAddr::from(([10, 0, 1, i as u8], 4000));
            join(&mut r, now, name, from);
            // Every holder announces the hash twice (two batches): listed once.
            r.announce(now, name, from, RequestId(1), true, &[hash(7), hash(8)])
                .unwrap();
            r.announce(now, name, from, RequestId(2), false, &[hash(7)])
                .unwrap();
        }
        let walk = |r: &Registry| {
            let (pages, first) = r.holders(now, &hash(7), 0);
            let mut all = first.unwrap();
            for page in 1..pages {
                let (n, peers) = r.holders(now, &hash(7), page);
                assert_eq!(n, pages);
                let peers = peers.unwrap();
                assert!(peers.len() <= HOLDERS_PER_PAGE);
                all.extend(peers);
            }
            assert_eq!(r.holders(now, &hash(7), pages).1, None, "past the end");
            all.into_iter()
                .map(|p| p.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(r.holders(now, &hash(7), 0).0, 4);
        assert_eq!(walk(&r), names);
        // One leaves mid-walk: no one is seen twice.
        let (_, first) = r.holders(now, &hash(7), 0);
        let mut seen: Vec<String> = first.unwrap().iter().map(|p| p.name.to_string()).collect();
        assert!(r.unregister("p03", addr("10.0.1.3:1").ip()));
        for page in 1..4 {
            let peers = r.holders(now, &hash(7), page).1.unwrap_or_default();
            seen.extend(peers.iter().map(|p| p.name.to_string()));
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{seen:?}");
        // Unknown: one empty page.
        assert_eq!(r.holders(now, &hash(99), 0), (1, Some(Vec::new())));
        assert_eq!(r.holders(now, &hash(99), 1), (1, None));
    }

    /// A page of the longest names at IPv6 addresses fits a control message.
    #[test]
    fn a_full_page_of_holders_fits_the_budget() {
        use crate::wire::{BoundedVec, Message, CONTROL_BUDGET};
        use std::net::{Ipv6Addr, SocketAddrV6};
        let name: String = "名".repeat(MAX_NAME_LEN / 3) + &"a".repeat(MAX_NAME_LEN % 3);
        assert_eq!(name.len(), MAX_NAME_LEN);
        let ip = Ipv6Addr::from([0xffff; 8]);
        let peer = PeerInfo {
            name: name.as_str().into(),
            addr: SocketAddr::V6(SocketAddrV6::new(ip, u16::MAX, 0, 0)),
            transport: TransportKind::Tcp,
        };
        let page = Message::Holders {
            request: RequestId(u64::MAX),
            hash: ContentHash([0xff; 32]),
            page: u32::MAX - 1,
            pages: u32::MAX,
            peers: BoundedVec(vec![peer; HOLDERS_PER_PAGE]),
        };
        let len = page.encode().len();
        assert!(len <= CONTROL_BUDGET, "{len} bytes");
        assert_eq!(crate::wire::decode(&page.encode()), Ok(page));
    }
}
