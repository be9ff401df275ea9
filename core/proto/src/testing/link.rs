//! What the simulated link does to each message: a [`Fate`], chosen when the message is sent
//! by the [`Pair`](super::Pair)'s link function from what it sees of the message ([`Sent`]):
//! a closure written for the test, or a [`RandomLink`] drawing fates from a seed.

use std::time::Duration;

use crate::wire::Message;

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// From the sender to the receiver (`Accept`, `Data`, `Fin`, `Abort`).
    ToReceiver,
    /// From the receiver to the sender (`Request`, `Ack`, `FinAck`, `Abort`).
    ToSender,
}

/// What the link does to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Arrives after the link's latency.
    Deliver,
    /// Never arrives.
    Drop,
    /// Arrives twice, both copies after the latency.
    Duplicate,
    /// Arrives this much later than the latency (so after messages sent later: reordering).
    Delay(Duration),
    /// Byte `at % len` of the encoded message is XORed with `xor` (or 1 when `xor` is 0). The
    /// decoder must refuse it (the [`Pair`](super::Pair) checks that it does), so it never
    /// arrives: a loss. Carried as values, it is simply lost.
    Corrupt {
        /// Where (modulo the message's length).
        at: u16,
        /// The bits flipped.
        xor: u8,
    },
}

impl Fate {
    /// Whether the message is lost (dropped or corrupted).
    pub fn is_loss(self) -> bool {
        matches!(self, Fate::Drop | Fate::Corrupt { .. })
    }
}

/// A message as the link sees it when it is sent: what it chooses a [`Fate`] from.
#[derive(Clone, Copy, Debug)]
pub struct Sent<'a> {
    /// Its direction.
    pub dir: Dir,
    /// How many messages (both directions) were sent before it: 0 for the first `Request`.
    pub n: u64,
    /// Time since the pair was created, on its clock.
    pub elapsed: Duration,
    /// The message.
    pub msg: &'a Message,
}

/// How often a [`RandomLink`] picks each fate other than [`Fate::Deliver`]: probabilities
/// between 0 and 1, adding up to at most 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Odds {
    /// [`Fate::Drop`].
    pub drop: f64,
    /// [`Fate::Duplicate`].
    pub duplicate: f64,
    /// [`Fate::Corrupt`].
    pub corrupt: f64,
    /// [`Fate::Delay`], by up to `max_delay`.
    pub delay: f64,
    /// Longest delay.
    pub max_delay: Duration,
}

impl Odds {
    /// A bad path: 10 % dropped, 2 % corrupted, 5 % duplicated, 10 % up to 30 ms late.
    pub const LOSSY: Odds = Odds {
        drop: 0.10,
        duplicate: 0.05,
        corrupt: 0.02,
        delay: 0.10,
        max_delay: Duration::from_millis(30),
    };
}

/// Fates drawn from a seed (splitmix64): the same seed gives the same fates for the same
/// sequence of messages, so a run is replayed from its seed.
///
/// Use it as a [`Pair`](super::Pair)'s link with `pair.with_link(move |s| link.fate(s))`.
#[derive(Clone, Debug)]
pub struct RandomLink {
    state: u64,
    odds: Odds,
}

impl RandomLink {
    /// A link drawing fates with `odds` from `seed`.
    pub fn new(seed: u64, odds: Odds) -> Self {
        RandomLink { state: seed, odds }
    }

    /// The next message's fate (only the order of calls counts, not the message).
    pub fn fate(&mut self, _sent: &Sent<'_>) -> Fate {
        let Odds {
            drop,
            duplicate,
            corrupt,
            delay,
            max_delay,
        } = self.odds;
        let x = self.unit();
        if x < drop {
            Fate::Drop
        } else if x < drop + duplicate {
            Fate::Duplicate
        } else if x < drop + duplicate + corrupt {
            let bits = self.next();
            Fate::Corrupt {
                at: bits as u16,
                xor: (bits >> 16) as u8,
            }
        } else if x < drop + duplicate + corrupt + delay {
            let nanos = u64::try_from(max_delay.as_nanos()).unwrap_or(u64::MAX);
            Fate::Delay(Duration::from_nanos(self.next() % nanos.saturating_add(1)))
        } else {
            Fate::Deliver
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
