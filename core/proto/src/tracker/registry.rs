//! `Registry`: the tracker's table of live peers, a plain state machine with `now` passed in.
//!
//! Each entry holds a `valid_until`; heartbeats push it forward, [`Registry::expire`] drops the
//! entries whose time has passed. The peer's IP always comes from the source address the
//! transport reports; only the port comes from the message.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::wire::{PeerInfo, TransportKind, MAX_NAME_LEN};

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
}

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
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Registry {
            config,
            peers: BTreeMap::new(),
        }
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
            *entry = Entry {
                addr,
                seen: source,
                transport,
                valid_until,
            };
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
        gone
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
}
