//! One module per subcommand of `p2p`.

pub(crate) mod completions;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod get;
pub(crate) mod ls;
pub(crate) mod man;
pub(crate) mod peer;
pub(crate) mod peers;
pub(crate) mod resolve;
pub(crate) mod share;
pub(crate) mod swarm_get;
pub(crate) mod tracker;
