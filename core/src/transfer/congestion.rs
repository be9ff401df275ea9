//! Congestion control: how many chunks may be in flight.
//!
//! [`NewReno`] is slow start plus AIMD with one window reduction per loss episode (recovery
//! ends once every chunk sent before the loss was acknowledged). Windows count chunks.

/// A congestion controller fed by the sender.
pub trait CongestionController: std::fmt::Debug + Send {
    /// Chunks allowed in flight.
    fn window(&self) -> u64;
    /// `acked` chunks were newly acknowledged.
    fn on_ack(&mut self, acked: u64);
    /// A chunk sent as transmission number `tx` was declared lost; `next_tx` is the number the
    /// next transmission will get (so losses of chunks sent before it belong to this episode).
    fn on_loss(&mut self, tx: u64, next_tx: u64);
    /// The retransmission timer fired.
    fn on_timeout(&mut self);
}

/// NewReno-style AIMD in chunks.
#[derive(Clone, Debug)]
pub struct NewReno {
    cwnd: u64,
    ssthresh: u64,
    acc: u64,
    recovery_until_tx: u64,
    min: u64,
    max: u64,
}

impl NewReno {
    /// Starts at `initial` chunks, never below 2 nor above `max`.
    pub fn new(initial: u64, max: u64) -> Self {
        NewReno {
            cwnd: initial.clamp(2, max.max(2)),
            ssthresh: u64::MAX,
            acc: 0,
            recovery_until_tx: 0,
            min: 2,
            max: max.max(2),
        }
    }
}

impl CongestionController for NewReno {
    fn window(&self) -> u64 {
        self.cwnd
    }

    fn on_ack(&mut self, acked: u64) {
        if self.cwnd < self.ssthresh {
            self.cwnd = (self.cwnd + acked).min(self.max);
        } else {
            self.acc += acked;
            while self.acc >= self.cwnd {
                self.acc -= self.cwnd;
                self.cwnd = (self.cwnd + 1).min(self.max);
            }
        }
    }

    fn on_loss(&mut self, tx: u64, next_tx: u64) {
        if tx < self.recovery_until_tx {
            return; // same loss episode
        }
        self.recovery_until_tx = next_tx;
        self.ssthresh = (self.cwnd / 2).max(self.min);
        self.cwnd = self.ssthresh;
        self.acc = 0;
    }

    fn on_timeout(&mut self) {
        self.ssthresh = (self.cwnd / 2).max(self.min);
        self.cwnd = self.min;
        self.acc = 0;
    }
}

/// No congestion control: a fixed window, for transports that do their own (TCP).
#[derive(Clone, Debug)]
pub struct FixedWindow(pub u64);

impl CongestionController for FixedWindow {
    fn window(&self) -> u64 {
        self.0
    }
    fn on_ack(&mut self, _: u64) {}
    fn on_loss(&mut self, _: u64, _: u64) {}
    fn on_timeout(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_then_one_halving_per_episode() {
        let mut cc = NewReno::new(10, 1000);
        cc.on_ack(10);
        assert_eq!(cc.window(), 20);
        cc.on_loss(5, 30);
        assert_eq!(cc.window(), 10);
        cc.on_loss(6, 31); // same episode: sent before the first loss was seen
        assert_eq!(cc.window(), 10);
        cc.on_ack(10); // congestion avoidance: +1 per window
        assert_eq!(cc.window(), 11);
        cc.on_loss(40, 50);
        assert_eq!(cc.window(), 5);
        cc.on_timeout();
        assert_eq!(cc.window(), 2);
    }

    #[test]
    fn window_is_bounded() {
        let mut cc = NewReno::new(10, 64);
        for _ in 0..100 {
            cc.on_ack(64);
        }
        assert_eq!(cc.window(), 64);
    }
}
