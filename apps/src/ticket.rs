//! Share tickets: what `p2p share` prints for someone else to paste into `p2p get`. A ticket
//! names the tracker to ask, the content's BLAKE3 hash and size, and a file name to save it
//! under: `p2p1` (the format's version) then those fields in base32, lower case, unpadded,
//! so that it survives a chat message, a terminal and a shell without quoting.
//!
//! Layout of the bytes (before base32): version `1`; the hash (32 bytes); the size (u64, little
//! endian); the tracker as text (`HOST:PORT`, a length byte then UTF-8); the name (the same).
//!
//! A sharer that publishes a signed record on the DHT (`p2p share --dht`, see
//! `crate::dht::record`) prints `p2p2` tickets instead: version byte `2`, the same fields,
//! then the sharer's identity key (32 bytes) and its peer name (text), so that `p2p get
//! TICKET --dht` can find the sharer by its record when neither a tracker nor the content's
//! announce does. A build from before them refuses a `p2p2` ticket cleanly ("of a newer
//! format: update p2p"); tickets without a key stay `p2p1`, byte for byte as before.
//!
//! A sharer that talks to its tracker sealed (`--tracker-key`, a tracker run with
//! `--secure`) prints `p2p3` tickets: version byte `3`, the `p2p1` fields, then a flags
//! byte (bit 0: the sharer's key and name follow, as in `p2p2`; bit 1: the tracker's identity
//! key follows, 32 bytes). `p2p get` of such a ticket talks to the tracker sealed under that
//! key, as with `--tracker-key`, so that nobody on the path can forge who holds the content.
//! Builds from before refuse it as of a newer format.
//!
//! A ticket for a folder (a collection, see `p2p_core::collection`) has the same layout: its
//! hash is the collection hash, its size the total of the files, and its name the folder's
//! with a trailing `/` (as a folder's entry in a listing), which tells `p2p get` that a
//! missing holder may mean a changed folder. A build from before collections reads such a
//! ticket, finds the folder's entry and fails cleanly: a collection has no bytes to download.

use std::fmt;

use data_encoding::BASE32_NOPAD;
use p2p_proto::wire::ContentHash;

/// What every ticket without a sharer's key starts with (the format's name and version).
pub(crate) const PREFIX: &str = "p2p1";
/// What a ticket with the sharer's key starts with.
pub(crate) const PREFIX_WITH_KEY: &str = "p2p2";
/// What a ticket with the tracker's key starts with (and maybe the sharer's).
pub(crate) const PREFIX_WITH_TRACKER_KEY: &str = "p2p3";

/// `p2p3` flags: the sharer's key and name follow.
const HAS_SHARER: u8 = 1;
/// `p2p3` flags: the tracker's identity key follows.
const HAS_TRACKER_KEY: u8 = 2;

/// Longest tracker address or name a ticket carries.
const MAX_TEXT: usize = 255;

/// A decoded ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// The tracker to ask who has the content, as `HOST:PORT`.
    pub(crate) tracker: String,
    /// The content.
    pub(crate) hash: ContentHash,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// The file name it was shared under; a folder's ends with `/`.
    pub(crate) name: String,
    /// The sharer, when it publishes a record on the DHT (a `p2p2` or `p2p3` ticket).
    pub(crate) sharer: Option<Sharer>,
    /// The tracker's identity key, when the sharer talks to it sealed (a `p2p3` ticket).
    pub(crate) tracker_key: Option<p2p_proto::identity::PublicKey>,
}

/// Who shared a ticket's content: a peer whose record the DHT has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sharer {
    /// Its identity key.
    pub(crate) key: p2p_proto::identity::PublicKey,
    /// Its peer name (its entry in the key's record).
    pub(crate) name: String,
}

/// Why a string is not a ticket.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TicketError {
    /// A `p2p` ticket of a later format.
    #[error("this ticket is of a newer format (`{0}`): update p2p to use it")]
    Newer(String),
    /// Not base32, cut short, or inconsistent.
    #[error("this ticket is damaged (copied only in part?): {0}")]
    Damaged(&'static str),
}

impl Ticket {
    /// A ticket for the folder `folder` (its name, without `/`), whose collection hash is
    /// `hash` and whose files add up to `size` bytes.
    pub(crate) fn for_folder(tracker: String, hash: ContentHash, size: u64, folder: &str) -> Self {
        let name = format!("{}/", truncate_to(folder, MAX_TEXT - 1));
        Ticket {
            tracker,
            hash,
            size,
            name,
            sharer: None,
            tracker_key: None,
        }
    }

    /// The folder's name (with its trailing `/`), when the ticket is a folder's.
    pub(crate) fn folder(&self) -> Option<&str> {
        self.name.ends_with('/').then_some(self.name.as_str())
    }

    /// Whether `s` looks like a ticket (any version), not a peer name.
    pub(crate) fn looks_like(s: &str) -> bool {
        s.len() > 40 && s.starts_with("p2p") && s[3..].starts_with(|c: char| c.is_ascii_digit())
    }

    /// Reads a ticket.
    pub(crate) fn parse(s: &str) -> Result<Ticket, TicketError> {
        let s = s.trim();
        let layouts = [
            (PREFIX, 1),
            (PREFIX_WITH_KEY, 2),
            (PREFIX_WITH_TRACKER_KEY, 3),
        ];
        let Some((body, layout)) = layouts
            .iter()
            .find_map(|&(prefix, layout)| s.strip_prefix(prefix).map(|body| (body, layout)))
        else {
            let version: String = s.chars().take(4).collect();
            return Err(TicketError::Newer(version));
        };
        let bytes = BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Damaged("not base32"))?;
        let mut r = Reader(&bytes);
        if r.take(1)? != [layout] {
            return Err(TicketError::Damaged("unknown layout"));
        }
        let hash = ContentHash(r.take(32)?.try_into().expect("32 bytes"));
        let size = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let tracker = r.text()?;
        let name = r.text()?;
        let flags = match layout {
            1 => 0,
            2 => HAS_SHARER,
            _ => match r.take(1)?[0] {
                f if f & !(HAS_SHARER | HAS_TRACKER_KEY) == 0 => f,
                _ => return Err(TicketError::Damaged("unknown flags")),
            },
        };
        let sharer = match flags & HAS_SHARER {
            0 => None,
            _ => Some(Sharer {
                key: r.take(32)?.try_into().expect("32 bytes"),
                name: r.text()?,
            }),
        };
        let tracker_key = match flags & HAS_TRACKER_KEY {
            0 => None,
            _ => Some(r.take(32)?.try_into().expect("32 bytes")),
        };
        if !r.0.is_empty() {
            return Err(TicketError::Damaged("trailing bytes"));
        }
        Ok(Ticket {
            tracker,
            hash,
            size,
            name,
            sharer,
            tracker_key,
        })
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (layout, prefix) = match (&self.sharer, self.tracker_key) {
            (None, None) => (1u8, PREFIX),
            (Some(_), None) => (2u8, PREFIX_WITH_KEY),
            (_, Some(_)) => (3u8, PREFIX_WITH_TRACKER_KEY),
        };
        let mut bytes = vec![layout];
        bytes.extend_from_slice(&self.hash.0);
        bytes.extend_from_slice(&self.size.to_le_bytes());
        let push_text = |bytes: &mut Vec<u8>, text: &str| {
            let t = truncate(text);
            bytes.push(t.len() as u8);
            bytes.extend_from_slice(t.as_bytes());
        };
        push_text(&mut bytes, &self.tracker);
        push_text(&mut bytes, &self.name);
        if layout == 3 {
            let sharer = if self.sharer.is_some() { HAS_SHARER } else { 0 };
            bytes.push(sharer | HAS_TRACKER_KEY);
        }
        if let Some(sharer) = &self.sharer {
            bytes.extend_from_slice(&sharer.key);
            push_text(&mut bytes, &sharer.name);
        }
        if let Some(key) = &self.tracker_key {
            bytes.extend_from_slice(key);
        }
        write!(
            f,
            "{prefix}{}",
            BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
        )
    }
}

/// `text` cut to at most [`MAX_TEXT`] bytes, on a character boundary.
fn truncate(text: &str) -> &str {
    truncate_to(text, MAX_TEXT)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate_to(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Damaged("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn text(&mut self) -> Result<String, TicketError> {
        let len = self.take(1)?[0] as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| TicketError::Damaged("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        Ticket {
            tracker: "tracker.example.org:9000".into(),
            hash: ContentHash::of(b"hello"),
            size: 5,
            name: "hello wörld.txt".into(),
            sharer: None,
            tracker_key: None,
        }
    }

    /// The bytes of `sample()`'s fields under layout byte `layout`, written out by hand:
    /// layout, hash, size, the tracker and the name (a length byte, then UTF-8).
    fn sample_fields(layout: u8) -> Vec<u8> {
        let mut bytes = vec![layout];
        bytes.extend_from_slice(&ContentHash::of(b"hello").0);
        bytes.extend_from_slice(&5u64.to_le_bytes());
        for t in ["tracker.example.org:9000", "hello wörld.txt"] {
            bytes.push(t.len() as u8);
            bytes.extend_from_slice(t.as_bytes());
        }
        bytes
    }

    /// `t` prints with `prefix`, looks like a ticket and reads back the same; cut inside its
    /// last key, it is damaged, not misread.
    fn round_trips(t: &Ticket, prefix: &str) {
        let text = t.to_string();
        assert!(text.starts_with(prefix), "{text}");
        assert!(Ticket::looks_like(&text));
        assert_eq!(Ticket::parse(&text).as_ref(), Ok(t));
        assert!(matches!(
            Ticket::parse(&text[..text.len() - 12]),
            Err(TicketError::Damaged(_))
        ));
    }

    /// A ticket printed before sharer keys existed still reads the same (the `p2p1` layout
    /// is unchanged).
    #[test]
    fn an_old_ticket_still_reads() {
        // `sample()` as a build from before sharer keys printed it.
        let old = sample().to_string();
        assert!(old.starts_with("p2p1"));
        let built = format!(
            "p2p1{}",
            BASE32_NOPAD.encode(&sample_fields(1)).to_ascii_lowercase()
        );
        assert_eq!(old, built);
        assert_eq!(Ticket::parse(&built), Ok(sample()));
    }

    #[test]
    fn tickets_with_the_sharers_key_round_trip() {
        let t = Ticket {
            tracker: String::new(),
            sharer: Some(Sharer {
                key: [9; 32],
                name: "alice".into(),
            }),
            ..sample()
        };
        round_trips(&t, "p2p2");
        // A `p2p2` prefix on a layout-1 body (or the reverse) is damaged.
        let swapped = format!("p2p2{}", &sample().to_string()[4..]);
        assert_eq!(
            Ticket::parse(&swapped),
            Err(TicketError::Damaged("unknown layout"))
        );
    }

    #[test]
    fn tickets_round_trip_and_look_like_tickets() {
        let t = sample();
        let text = t.to_string();
        assert!(text.starts_with("p2p1"));
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert!(Ticket::looks_like(&text));
        assert!(!Ticket::looks_like("alice"));
        assert_eq!(Ticket::parse(&text), Ok(t.clone()));
        // Pasted with spaces around, or in upper case, it still reads.
        assert_eq!(Ticket::parse(&format!("  {text}\n")), Ok(t.clone()));
        let upper = format!("p2p1{}", text[4..].to_ascii_uppercase());
        assert_eq!(Ticket::parse(&upper), Ok(t));
    }

    #[test]
    fn folder_tickets_say_so_and_round_trip() {
        let long = "é".repeat(200);
        for name in ["photos", long.as_str()] {
            let t = Ticket::for_folder("127.0.0.1:9000".into(), ContentHash::of(b"m"), 7, name);
            let back = Ticket::parse(&t.to_string()).unwrap();
            let folder = back.folder().expect("a folder's ticket");
            assert!(
                folder.ends_with('/') && folder.len() <= MAX_TEXT,
                "{folder}"
            );
            assert!(name.starts_with(folder.trim_end_matches('/')));
            assert_eq!(back, t);
        }
        assert_eq!(sample().folder(), None);
    }

    #[test]
    fn damaged_or_newer_tickets_say_so() {
        let text = sample().to_string();
        assert!(matches!(
            Ticket::parse(&text[..text.len() - 10]),
            Err(TicketError::Damaged(_))
        ));
        assert!(matches!(
            Ticket::parse(&format!("{text}a")),
            Err(TicketError::Damaged(_))
        ));
        assert!(matches!(
            Ticket::parse(&format!("p2p4{}", &text[4..])),
            Err(TicketError::Newer(_))
        ));
    }

    /// A ticket carries the tracker's key (`p2p3`), with or without the sharer's; damage
    /// and unknown flags are refused, never misread.
    #[test]
    fn tickets_with_the_trackers_key_round_trip() {
        let sharer = Some(Sharer {
            key: [9; 32],
            name: "alice".into(),
        });
        for sharer in [None, sharer] {
            let t = Ticket {
                tracker_key: Some([7; 32]),
                sharer,
                ..sample()
            };
            round_trips(&t, "p2p3");
        }
        // The flags byte of a `p2p3` ticket of `sample()`: after the layout, hash, size and
        // the two texts.
        let bytes = sample_fields(3);
        let encode = |b: &[u8]| format!("p2p3{}", BASE32_NOPAD.encode(b).to_ascii_lowercase());
        let mut good = bytes.clone();
        good.push(HAS_TRACKER_KEY);
        good.extend_from_slice(&[7; 32]);
        let parsed = Ticket::parse(&encode(&good)).unwrap();
        assert_eq!(parsed.tracker_key, Some([7; 32]));
        let mut unknown = bytes;
        unknown.push(HAS_TRACKER_KEY | 4);
        unknown.extend_from_slice(&[7; 32]);
        assert_eq!(
            Ticket::parse(&encode(&unknown)),
            Err(TicketError::Damaged("unknown flags"))
        );
    }
}
