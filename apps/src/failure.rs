//! Why a command failed, for scripts: a [`Kind`] with a stable name (`--json` prints it as
//! `{"error":{"kind":"unknown_peer","message":"..."}}`) and an exit code (README: "Exit
//! codes"). The message is for people; the kind and the code are the contract.

use std::fmt;

use p2p_core::service::lock::LockError;
use p2p_core::service::ServiceError;
use p2p_proto::secure::SEALED_ONLY;
use p2p_proto::transfer::TransferError;
use p2p_proto::wire::AbortReason;

use crate::output::{clean, human_bytes};

/// What kind of failure ended a command. Names and exit codes are a contract with scripts:
/// add kinds, never rename one or change its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Anything not listed below (exit 1).
    Failed,
    /// Not enough disk space for a download (exit 1).
    NoSpace,
    /// Bad flags or argument values (exit 2).
    Usage,
    /// A peer name the tracker would refuse (exit 2).
    InvalidName,
    /// A path that must be a folder is a file, or does not exist (exit 2).
    NotAFolder,
    /// Stopped by the user (Ctrl-C, SIGTERM); what was verified is kept (exit 3).
    Interrupted,
    /// The download stopped; its verified part is kept for a resume (exit 3).
    Incomplete,
    /// The tracker lists no peer of that name (exit 4).
    UnknownPeer,
    /// The peer shares no file of that ID (exit 4).
    UnknownFile,
    /// The tracker does not answer (exit 5).
    TrackerUnreachable,
    /// The peer does not answer (exit 5).
    PeerUnreachable,
    /// The tracker refused our name (taken by a live peer, or too many new names) (exit 6).
    NameRefused,
    /// A file with other content has the destination's name (exit 6).
    DestinationExists,
    /// Another download writes the same destination (exit 6).
    Locked,
    /// Another program listens on the port (exit 6).
    PortInUse,
    /// No sealed session: `get --secure` from a peer that does not accept them (or proves
    /// another key than the tracker binds its name to), or a plain `get` from a peer that
    /// takes them only (exit 1).
    Secure,
}

impl Kind {
    /// The stable name scripts match (`--json`'s `kind`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::NoSpace => "no_space",
            Kind::Usage => "usage",
            Kind::InvalidName => "invalid_name",
            Kind::NotAFolder => "not_a_folder",
            Kind::Interrupted => "interrupted",
            Kind::Incomplete => "incomplete",
            Kind::UnknownPeer => "unknown_peer",
            Kind::UnknownFile => "unknown_file",
            Kind::TrackerUnreachable => "tracker_unreachable",
            Kind::PeerUnreachable => "peer_unreachable",
            Kind::NameRefused => "name_refused",
            Kind::DestinationExists => "destination_exists",
            Kind::Locked => "locked",
            Kind::PortInUse => "port_in_use",
            Kind::Secure => "secure",
        }
    }

    /// The process's exit code.
    pub(crate) fn exit_code(self) -> i32 {
        match self {
            Kind::Failed | Kind::NoSpace | Kind::Secure => 1,
            Kind::Usage | Kind::InvalidName | Kind::NotAFolder => 2,
            Kind::Interrupted | Kind::Incomplete => 3,
            Kind::UnknownPeer | Kind::UnknownFile => 4,
            Kind::TrackerUnreachable | Kind::PeerUnreachable => 5,
            Kind::NameRefused | Kind::DestinationExists | Kind::Locked | Kind::PortInUse => 6,
        }
    }
}

/// An error of a known [`Kind`]: its message is what the user reads.
#[derive(Debug)]
pub(crate) struct Failure {
    kind: Kind,
    message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error of `kind` saying `message`.
pub(crate) fn failure(kind: Kind, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        kind,
        message: message.into(),
    })
}

/// `Err(failure(kind, message))`, as `bail!` does for plain errors.
macro_rules! fail {
    ($kind:expr, $($arg:tt)*) => {
        return Err($crate::failure::failure($kind, format!($($arg)*)))
    };
}
pub(crate) use fail;

/// Tags an error with a [`Kind`] and a message that goes before its cause.
pub(crate) trait WithKind<T> {
    /// On error, `message(): cause`, of `kind`.
    fn with_kind(self, kind: Kind, message: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T, E> WithKind<T> for Result<T, E>
where
    E: Into<anyhow::Error>,
{
    fn with_kind(self, kind: Kind, message: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| {
            e.into().context(Failure {
                kind,
                message: message(),
            })
        })
    }
}

/// The kind of `e`: the outermost [`Failure`]'s, else what its causes say.
pub(crate) fn kind_of(e: &anyhow::Error) -> Kind {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return f.kind;
    }
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.kind;
        }
        if let Some(s) = cause.downcast_ref::<ServiceError>() {
            return service_kind(s);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::AddrInUse {
                return Kind::PortInUse;
            }
        }
    }
    Kind::Failed
}

fn service_kind(e: &ServiceError) -> Kind {
    match e {
        ServiceError::Incomplete { .. } => Kind::Incomplete,
        ServiceError::NoSpace { .. } => Kind::NoSpace,
        ServiceError::DestinationDiffers(_) | ServiceError::DestinationExists(_) => {
            Kind::DestinationExists
        }
        ServiceError::Locked(LockError::Held { .. }) => Kind::Locked,
        ServiceError::NoAnswer(_) => Kind::PeerUnreachable,
        ServiceError::Refused(r) if r == SEALED_ONLY => Kind::Secure,
        ServiceError::Transfer(TransferError::Aborted(AbortReason::Other(r)))
            if r == SEALED_ONLY =>
        {
            Kind::Secure
        }
        _ => Kind::Failed,
    }
}

/// `e` for people, as `{e:#}` (each cause after a colon) with byte counts in human units,
/// made safe for a terminal.
pub(crate) fn describe(e: &anyhow::Error) -> String {
    let layers: Vec<String> = e
        .chain()
        .map(|cause| match cause.downcast_ref::<ServiceError>() {
            Some(s) => describe_service(s),
            None => cause.to_string(),
        })
        .collect();
    clean(&dedup(layers).join(": "))
}

/// A [`ServiceError`] for people: its own text, with byte counts in human units.
pub(crate) fn describe_service(e: &ServiceError) -> String {
    match e {
        ServiceError::Incomplete {
            cause,
            kept,
            partial,
        } => format!(
            "{}; {} verified kept in {}: run the same download again to resume",
            describe_service(cause),
            human_bytes(*kept),
            partial.display()
        ),
        ServiceError::NoSpace {
            folder,
            needed,
            message,
        } => format!(
            "not enough disk space in {} for the {} left to fetch ({message}); free some space and run the download again",
            folder.display(),
            human_bytes(*needed)
        ),
        other => other.to_string(),
    }
}

/// Drops a layer whose text only repeats the end of the one before (`transfer failed: x`
/// followed by its source `x`).
fn dedup(layers: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(layers.len());
    for layer in layers {
        if out.last().is_some_and(|prev| prev.ends_with(&layer)) {
            continue;
        }
        out.push(layer);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_names_and_codes() {
        assert_eq!(Kind::UnknownPeer.name(), "unknown_peer");
        assert_eq!(Kind::UnknownPeer.exit_code(), 4);
        assert_eq!(Kind::Usage.exit_code(), 2);
        assert_eq!(Kind::Interrupted.exit_code(), 3);
        assert_eq!(Kind::Failed.exit_code(), 1);
        assert_eq!(Kind::Secure.name(), "secure");
        assert_eq!(Kind::Secure.exit_code(), 1);
    }

    #[test]
    fn a_sealed_only_refusal_is_of_kind_secure() {
        let refused = ServiceError::Refused(SEALED_ONLY.into());
        assert_eq!(kind_of(&anyhow::Error::new(refused)), Kind::Secure);
        let refused = ServiceError::Refused("no".into());
        assert_eq!(kind_of(&anyhow::Error::new(refused)), Kind::Failed);
    }

    #[test]
    fn the_outermost_kind_wins_and_service_errors_are_classified() {
        let inner: Result<(), _> = Err(ServiceError::NoAnswer("127.0.0.1:9".parse().unwrap()));
        let e = inner
            .with_kind(Kind::TrackerUnreachable, || "no tracker".into())
            .unwrap_err();
        assert_eq!(kind_of(&e), Kind::TrackerUnreachable);
        assert!(describe(&e).starts_with("no tracker: no answer from 127.0.0.1:9"));
        let bare = anyhow::Error::new(ServiceError::NoAnswer("127.0.0.1:9".parse().unwrap()));
        assert_eq!(kind_of(&bare), Kind::PeerUnreachable);
        assert_eq!(kind_of(&anyhow::anyhow!("what")), Kind::Failed);
    }

    #[test]
    fn byte_counts_read_in_human_units() {
        let e = ServiceError::Incomplete {
            cause: Box::new(ServiceError::Closed),
            kept: 205 * 1024 * 1024,
            partial: ".big.p2p-part".into(),
        };
        let text = describe(&anyhow::Error::new(e).context("download failed"));
        assert_eq!(
            text,
            "download failed: the endpoint has stopped; 205.0 MiB verified kept in .big.p2p-part: run the same download again to resume"
        );
    }
}
