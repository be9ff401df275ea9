//! Command-line definitions. Names and flags are a contract with users and scripts.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use p2p_proto::wire::TransportKind;

use crate::config;

/// Peer-to-peer file sharing over UDP or TCP, with a tracker of live peers.
#[derive(Parser, Debug)]
#[command(
    name = "p2p",
    version,
    about,
    propagate_version = true,
    after_help = MAIN_EXAMPLES
)]
pub(crate) struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Colour in the logs on stderr: auto (when stderr is a terminal and NO_COLOR is unset),
    /// always or never.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    pub color: Color,
    #[command(subcommand)]
    pub command: Command,
}

/// When the logs on stderr are coloured.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Color {
    /// When stderr is a terminal and NO_COLOR is unset.
    Auto,
    /// Always (e.g. through `less -R`).
    Always,
    /// Never.
    Never,
}

impl Color {
    /// Whether what goes to stderr gets colour.
    pub(crate) fn on_stderr(self) -> bool {
        use std::io::IsTerminal;
        match self {
            Color::Auto => {
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
            Color::Always => true,
            Color::Never => false,
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run a tracker (serves UDP and TCP on the same port).
    Tracker(TrackerArgs),
    /// Run a peer: share a folder, register with the tracker, interactive menu.
    Peer(PeerArgs),
    /// List the live peers.
    Peers(PeersArgs),
    /// List the files a peer shares.
    Ls(LsArgs),
    /// Download a file from a peer (and every other peer with the same content), by content
    /// hash, or from a share ticket.
    Get(GetArgs),
    /// Print the signed record of an identity key on the DHT: where its peers listen.
    #[command(after_help = RESOLVE_EXAMPLES)]
    Resolve(ResolveArgs),
    /// Share one file or folder and print a ticket for `p2p get` on another machine.
    #[command(after_help = SHARE_EXAMPLES)]
    Share(ShareArgs),
    /// Start a tracker and two peers on 127.0.0.1 and transfer shared/ over UDP and TCP.
    Demo(DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Print the manual page (roff), of p2p or of one of its commands.
    #[command(after_help = MAN_EXAMPLES)]
    Man(ManArgs),
    /// Show the settings in effect (tracker, name, share, downloads, transport), where each
    /// comes from, and the config file's path.
    #[command(after_help = CONFIG_EXAMPLES)]
    Config(ConfigArgs),
}

/// Parses the command line, then fills the settings it leaves out from the `P2P_*`
/// environment variables and the config file (see [`config`]). A setting that cannot be used
/// is a usage error (exit code 2), as a bad flag is.
pub(crate) fn parse() -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches()?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut Cli::command()))?;
    if let Some((_, sub)) = matches.subcommand() {
        config::apply(&mut cli.command, sub).map_err(|e| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("{e}\n")).with_cmd(&Cli::command())
        })?;
    }
    Ok(cli)
}

const MAIN_EXAMPLES: &str = "\
Examples:
  p2p tracker                                  # terminal 1: the tracker, on port 9000
  p2p peer --name alice --port 10001           # terminal 2: share ./shared, with a menu
  p2p peers                                    # who is online
  p2p ls alice                                 # alice's files and their IDs
  p2p get alice 003 --out ~/Downloads          # download file 003, verified

Exit codes: 0 ok, 1 failed, 2 usage (bad flags, values or folders), 3 interrupted or stopped
with the verified part kept (run it again to resume), 4 peer or file not found, 5 tracker or
peer unreachable, 6 conflict (name refused, file exists, download running elsewhere, port in
use). With --json, errors are {\"error\":{\"kind\":...,\"message\":...}} on stdout.

Settings: a flag wins over its environment variable (P2P_TRACKER, P2P_NAME, P2P_SHARE,
P2P_DOWNLOADS, P2P_TRANSPORT, P2P_DHT_BOOTSTRAP), which wins over the config file (~/.config/p2p/config.toml on
Linux, or the file P2P_CONFIG names), which wins over the built-in default. `p2p config` shows
what is in effect and where each setting comes from.

`p2p COMMAND --help` for each command.";

const TRACKER_EXAMPLES: &str = "\
Examples:
  p2p tracker                                  # 0.0.0.0:9000, UDP and TCP
  p2p tracker --listen 127.0.0.1:9100          # another address or port
  p2p tracker --listen [::]:9000               # IPv6 (and IPv4 where the system allows)
  p2p tracker --peer-ttl 1m --heartbeat 20s    # slower expiry";

const PEER_EXAMPLES: &str = "\
Examples:
  p2p peer                                     # asks for a port and a name, then the menu
  p2p peer --name bob --port 10002 --share ~/Music --downloads ~/Downloads
  p2p peer --name seeder --port 10003 --no-menu &   # serve until SIGINT/SIGTERM
  p2p peer --name t --port 10004 --transport tcp --tracker 192.0.2.7:9000
  p2p peer --port 10005 --no-menu --dht        # no tracker: announce ./shared on the DHT
  p2p peer --name carol --port 10006 --secure-only   # serve sealed sessions only

Menu commands: i NAME (files), c NAME ID (download), d (downloads), r (peers), ? (help), q (quit).";

const PEERS_EXAMPLES: &str = "\
Examples:
  p2p peers                                    # `  - alice (127.0.0.1:10001 udp)`
  p2p peers --tracker 192.0.2.7:9000 --json    # a JSON array of name, addr, transport";

const LS_EXAMPLES: &str = "\
Examples:
  p2p ls alice                                 # `ID: 003 -> shared/file3.txt (26.9 KiB)`
  p2p ls alice --json                          # a JSON array of id, path, size, hash";

const GET_EXAMPLES: &str = "\
Examples:
  p2p get alice 003                            # into ./downloads; prints the saved path
  p2p get alice 3 --out ~/Downloads            # IDs may drop their leading zeros
  p2p get alice 003 --json                     # one JSON object: path, size, received, ...
  p2p get alice 003 --busy-wait 0              # fail at once if alice is busy
  p2p get blake3:HEX --dht                     # sources from the DHT (and the tracker, if given)
  p2p get KEY 003 --dht                        # from the peer of identity key KEY (64 hex
                                               # digits), found by its record on the DHT
  p2p get alice@KEY 003 --dht                  # the same, when the key has several peers
  p2p get alice 003 --secure                   # sealed: encrypted, alice's key proven

Interrupted (Ctrl-C, peer gone), the verified part is kept: run the same get again to resume.";

const RESOLVE_EXAMPLES: &str = "\
Examples:
  p2p resolve KEY                              # KEY: 64 hex digits, as `p2p peer --dht` prints it
  p2p resolve alice@KEY --json                 # one peer of the key, as JSON
  p2p resolve KEY --dht-bootstrap 192.0.2.7:6881

Prints each peer of the key's record (name, transport, addresses, when it last published).
Exit 4 when the DHT has no record of the key within 10 s, 1 when the record found is not
valid (bad signature or fields).";

const DEMO_EXAMPLES: &str = "\
Examples:
  p2p demo                                     # from the repository root (shares ./shared)
  p2p demo --share ~/Music";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  p2p completions bash > ~/.local/share/bash-completion/completions/p2p
  p2p completions zsh > ~/.zfunc/_p2p          # with fpath+=(~/.zfunc) in ~/.zshrc
  p2p completions fish > ~/.config/fish/completions/p2p.fish";

const CONFIG_EXAMPLES: &str = "\
Examples:
  p2p config                                   # each setting, its value and its source
  p2p config --path                            # the config file p2p reads
  P2P_TRACKER=tracker.lan:9000 p2p config      # what the variable changes
  p2p config --json                            # the same, for scripts

The config file (TOML; every key optional; `~/` is the home folder):
  tracker = \"tracker.example.org:9000\"
  name = \"alice\"
  share = \"~/Music\"
  downloads = \"~/Downloads\"
  transport = \"udp\"
  dht-bootstrap = \"router.bittorrent.com:6881,dht.transmissionbt.com:6881\"

A flag wins over the environment (P2P_TRACKER, P2P_NAME, P2P_SHARE, P2P_DOWNLOADS,
P2P_TRANSPORT, P2P_DHT_BOOTSTRAP; empty counts as unset), the environment over the file, the file over the
built-in default. P2P_CONFIG names another file.";

const MAN_EXAMPLES: &str = "\
Examples:
  p2p man | man -l -                           # read it now
  p2p man get | man -l -                       # the page of `p2p get`
  p2p man > ~/.local/share/man/man1/p2p.1      # install it for `man p2p`";

/// `--transport`'s values, listed in `--help` and in errors.
fn transport_values() -> impl TypedValueParser<Value = TransportKind> {
    PossibleValuesParser::new([
        PossibleValue::new("udp").help("UDP datagrams (the default)"),
        PossibleValue::new("tcp").help("TCP connections"),
    ])
    .map(|s| s.parse::<TransportKind>().expect("a listed transport"))
}

/// Parses `20MiB`, `1.5G`, `512k` or a plain number of bytes (binary units).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 20MiB or 512k"))?;
    let mult: f64 = match unit.to_ascii_lowercase().trim_end_matches("/s") {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("`{s}`: unknown unit (use k, M or G)")),
    };
    if n < 0.0 || !n.is_finite() {
        return Err(format!("`{s}` must be positive"));
    }
    Ok((n * mult) as u64)
}

/// Addresses as people write them (`IP:PORT`, `[IPv6]:PORT`, `HOST:PORT`), resolved when
/// the command line is read; an error names the flag, what was written and what to do.
#[derive(Clone)]
struct AddressParser;

impl TypedValueParser for AddressParser {
    type Value = SocketAddr;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<SocketAddr, clap::Error> {
        let flag = arg
            .and_then(|a| a.get_long())
            .map_or_else(|| "address".to_string(), |l| format!("--{l}"));
        let refuse = |why: String| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("{flag} {why}\n")).with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("is not valid UTF-8: write HOST:PORT".into()))?;
        crate::address::resolve(text).map_err(|e| refuse(e.to_string()))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 30s or 500ms: {e}"))
}

#[derive(Args, Debug)]
#[command(after_help = TRACKER_EXAMPLES)]
pub(crate) struct TrackerArgs {
    /// Address to listen on (UDP and TCP): IP:PORT, [IPv6]:PORT or HOST:PORT. 0.0.0.0 is
    /// every IPv4 interface; a specific address listens on that interface only.
    #[arg(long, default_value = "0.0.0.0:9000", value_name = "ADDR", value_parser = AddressParser)]
    pub listen: SocketAddr,
    /// How long a peer stays listed without a heartbeat.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub peer_ttl: Duration,
    /// Heartbeat period suggested to peers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Most peers listed at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_peers: usize,
    /// Do not relay between peers that cannot reach each other (RelayOpen is refused with
    /// "this tracker does not relay").
    #[arg(long)]
    pub no_relay: bool,
    /// Cap on the bytes the relay forwards per second, all sessions together (e.g. 64MiB);
    /// over it, relayed datagrams are dropped.
    #[arg(long, default_value = "64MiB", value_name = "RATE", value_parser = parse_relay_rate)]
    pub relay_rate: u64,
    /// Cap on the bytes the relay forwards per second for one session (one pair of peers);
    /// at most --relay-rate.
    #[arg(long, default_value = "16MiB", value_name = "RATE", value_parser = parse_relay_rate)]
    pub relay_session_rate: u64,
    /// Cap on the bytes the relay forwards per second to and from one relayed peer, all its
    /// sessions together; at most --relay-rate.
    #[arg(long, default_value = "32MiB", value_name = "RATE", value_parser = parse_relay_rate)]
    pub relay_peer_rate: u64,
    /// Most relay sessions open at once (each costs a few hundred bytes; none buffers).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub relay_sessions: usize,
    /// Keep the names' identity-key bindings in FILE across restarts (read at start,
    /// written within 5 s of a change): a restarted tracker then refuses a name to anyone
    /// but its key, as before the restart. Without it, bindings live in memory only.
    #[arg(long, value_name = "FILE")]
    pub bindings: Option<std::path::PathBuf>,
    /// Prove this tracker's identity key (the user's, as a peer's) in sealed sessions to
    /// clients that ask for one (`--tracker-key KEY`, the key printed at start): their
    /// requests and its answers are then encrypted and authenticated. Plaintext clients are
    /// still served.
    #[arg(long)]
    pub secure: bool,
    #[command(flatten)]
    pub limits: ServiceLimits,
}

/// `--tracker-key`: an identity key, 64 hex digits.
pub(crate) fn parse_tracker_key(s: &str) -> Result<p2p_proto::identity::PublicKey, String> {
    match crate::dht::record::parse_key(s) {
        Some(key) if p2p_proto::secure::x25519_public(&key).is_some() => Ok(key),
        Some(_) => {
            Err("not a valid identity key: copy the key `p2p tracker --secure` printed".into())
        }
        None => Err(
            "expected the tracker's key as 64 hex digits (`p2p tracker --secure` prints it)".into(),
        ),
    }
}

/// `--relay-rate`: a rate as `--max-upload-rate` takes it, more than 0.
fn parse_relay_rate(s: &str) -> Result<u64, String> {
    match parse_bytes(s)? {
        0 => {
            Err("the relay rate must be more than 0 (use --no-relay to turn the relay off)".into())
        }
        rate => Ok(rate),
    }
}

/// Limits shared by the tracker and peers.
#[derive(Args, Debug, Clone)]
pub(crate) struct ServiceLimits {
    /// Requests per second accepted from one IP address (twice that as a burst); more are
    /// dropped.
    #[arg(long, default_value_t = 200.0)]
    pub rate_limit: f64,
    /// Most TCP connections open at once (at the cap the idlest one is closed).
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
}

impl ServiceLimits {
    pub(crate) fn rate(&self) -> p2p_proto::limits::RateConfig {
        p2p_proto::limits::RateConfig {
            per_second: self.rate_limit,
            burst: self.rate_limit * 2.0,
            ..Default::default()
        }
    }

    pub(crate) fn tcp(&self) -> p2p_transports::TcpConfig {
        p2p_transports::TcpConfig {
            max_connections: self.max_connections,
            ..Default::default()
        }
    }
}

/// Options shared by the commands that talk to the tracker.
#[derive(Args, Debug, Clone)]
pub(crate) struct TrackerOpts {
    /// Tracker address: IP:PORT, [IPv6]:PORT or HOST:PORT (a name with several addresses:
    /// its first IPv4 one). Else P2P_TRACKER, else the config file's `tracker`.
    #[arg(long, default_value = DEFAULT_TRACKER, value_name = "ADDR", value_parser = AddressParser)]
    pub tracker: SocketAddr,
    /// Transport used to reach the tracker (a peer is reached over the one it registered).
    /// Else P2P_TRANSPORT, else the config file's `transport`.
    #[arg(long, default_value = "udp", value_parser = transport_values())]
    pub transport: TransportKind,
    /// The tracker's identity key (64 hex digits, printed by `p2p tracker --secure`): talk
    /// to the tracker in a sealed session that proves this key, and take no answer that is
    /// not sealed in it (a forged or rewritten answer is dropped; another key is refused).
    /// Else P2P_TRACKER_KEY, else the config file's `tracker-key`.
    #[arg(long, value_name = "KEY", value_parser = parse_tracker_key)]
    pub tracker_key: Option<p2p_proto::identity::PublicKey>,
    /// Whether the tracker was given (flag, environment or config file) rather than left at
    /// its default (filled after parsing; `get --dht` without one uses the DHT alone).
    #[arg(skip)]
    pub tracker_given: bool,
    /// Where `tracker_key` came from (a ticket's replaces the flag's: `get TICKET`).
    #[arg(skip = crate::session::KeyFrom::Flag)]
    pub key_from: crate::session::KeyFrom,
}

/// Finding sources by content on the BitTorrent Mainline DHT (docs/DHT.md).
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct DhtOpts {
    /// Use the BitTorrent Mainline DHT: a peer announces what it shares there, `get` looks
    /// sources up there. With no tracker given (--tracker, P2P_TRACKER or the config file's
    /// `tracker`), the DHT alone; with one, both, the tracker first.
    #[arg(long)]
    pub dht: bool,
    /// A DHT node to join the DHT through, HOST:PORT (IPv4; repeatable). Else
    /// P2P_DHT_BOOTSTRAP, else the config file's `dht-bootstrap` (comma-separated), else the
    /// public nodes router.bittorrent.com:6881, dht.transmissionbt.com:6881 and
    /// router.utorrent.com:6881.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = Ipv4AddressParser, requires = "dht")]
    pub dht_bootstrap: Vec<SocketAddr>,
}

/// [`AddressParser`], refusing IPv6: the Mainline DHT is reached over IPv4 here.
#[derive(Clone)]
struct Ipv4AddressParser;

impl TypedValueParser for Ipv4AddressParser {
    type Value = SocketAddr;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<SocketAddr, clap::Error> {
        let addr = AddressParser.parse_ref(cmd, arg, value)?;
        if addr.is_ipv6() {
            return Err(clap::Error::raw(
                ErrorKind::ValueValidation,
                format!(
                    "--dht-bootstrap {addr}: the DHT is reached over IPv4: give an IPv4 address or a name with one\n"
                ),
            )
            .with_cmd(cmd));
        }
        Ok(addr)
    }
}

#[derive(Args, Debug)]
#[command(after_help = PEER_EXAMPLES)]
pub(crate) struct PeerArgs {
    /// Name to register. Else P2P_NAME, else the config file's `name`, else asked for.
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on: IP:PORT, [IPv6]:PORT or HOST:PORT (one interface; --port
    /// listens on every IPv4 interface).
    #[arg(long, conflicts_with = "port", value_name = "ADDR", value_parser = AddressParser)]
    pub listen: Option<SocketAddr>,
    /// Port to listen on, all interfaces (asked for when missing).
    #[arg(long)]
    pub port: Option<u16>,
    /// Tracker address: IP:PORT, [IPv6]:PORT or HOST:PORT. Else P2P_TRACKER, else the
    /// config file's `tracker`.
    #[arg(long, default_value = DEFAULT_TRACKER, value_name = "ADDR", value_parser = AddressParser)]
    pub tracker: SocketAddr,
    /// The tracker's identity key (64 hex digits, printed by `p2p tracker --secure`):
    /// register, heartbeat and look up in a sealed session that proves this key. Else
    /// P2P_TRACKER_KEY, else the config file's `tracker-key`.
    #[arg(long, value_name = "KEY", value_parser = parse_tracker_key)]
    pub tracker_key: Option<p2p_proto::identity::PublicKey>,
    /// Folder to share. Else P2P_SHARE, else the config file's `share`.
    #[arg(long, default_value = DEFAULT_SHARE)]
    pub share: PathBuf,
    /// Folder for downloads made from the menu. Else P2P_DOWNLOADS, else the config file's
    /// `downloads`.
    #[arg(long, default_value = DEFAULT_DOWNLOADS)]
    pub downloads: PathBuf,
    /// Transport to listen on and to reach the tracker with. Else P2P_TRANSPORT, else the
    /// config file's `transport`.
    #[arg(long, default_value = "udp", value_parser = transport_values())]
    pub transport: TransportKind,
    /// No interactive menu: serve until SIGINT/SIGTERM.
    #[arg(long)]
    pub no_menu: bool,
    /// Heartbeat period (default: what the tracker suggests).
    #[arg(long, value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Most uploads served at once.
    #[arg(long, default_value_t = 32)]
    pub max_uploads: usize,
    /// Most uploads served at once to one IP address.
    #[arg(long, default_value_t = 8)]
    pub max_uploads_per_peer: usize,
    /// While downloads wait for an upload slot, the longest one upload holds its slot
    /// before it lends it to the next in line and waits for another turn (a turn ends
    /// sooner once 4 MiB more are acknowledged), so that all progress at even rates
    /// (0: each upload keeps its slot to the end).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub upload_turn: Duration,
    /// Cap on upload bandwidth, all uploads together (e.g. 20MiB); default: none.
    #[arg(long, value_parser = parse_bytes)]
    pub max_upload_rate: Option<u64>,
    /// A transfer whose other side is silent this long fails.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Largest UDP datagram to send, to every address (default: 1452 bytes, which fits a
    /// 1500-byte MTU, and 60 KiB to loopback addresses). E.g. 8952 on a network of
    /// 9000-byte jumbo frames.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1200..=65507))]
    pub max_datagram: Option<u16>,
    /// Accept sealed sessions (end-to-end encrypted and authenticated, proving this peer's
    /// identity key: `p2p get --secure`) as well as plaintext ones: the default (the flag
    /// is kept for scripts that pass it). The menu's own downloads stay plaintext.
    #[arg(long)]
    pub secure: bool,
    /// Take sealed sessions only: a plaintext request from a peer is refused ("sealed
    /// sessions only"), and the menu's own downloads are sealed too (a peer that does not
    /// accept sealed sessions cannot be downloaded from).
    #[arg(long)]
    pub secure_only: bool,
    /// Plaintext only: sealed handshakes go unanswered (`p2p get --secure` of this peer
    /// fails), and no identity key is needed for the transfers.
    #[arg(long, conflicts_with_all = ["secure", "secure_only"])]
    pub no_secure: bool,
    #[command(flatten)]
    pub limits: ServiceLimits,
    #[command(flatten)]
    pub dht: DhtOpts,
    /// Whether the tracker was given (flag, environment or config file) rather than left at
    /// its default: with --dht and none given, the peer uses the DHT alone (filled after
    /// parsing).
    #[arg(skip)]
    pub tracker_given: bool,
}

/// `p2p share PATH`: a peer without a menu whose share is PATH.
#[derive(Args, Debug)]
pub(crate) struct ShareArgs {
    /// The file or folder to share.
    pub path: PathBuf,
    /// Every flag of `p2p peer` but --share (PATH is the share) and --no-menu (there is
    /// none); the name defaults to `share-` and four random hex digits.
    #[command(flatten)]
    pub peer: PeerArgs,
}

const SHARE_EXAMPLES: &str = "\
Examples:
  p2p share ~/video.mkv --tracker tracker.example.org:9000
      # prints a ticket; on another machine: p2p get p2p1...
  p2p share ./photos --name bob --port 10002    # a folder: one ticket per file";

#[derive(Args, Debug)]
#[command(after_help = PEERS_EXAMPLES)]
pub(crate) struct PeersArgs {
    #[command(flatten)]
    pub tracker: TrackerOpts,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Only the peers that share this content (`blake3:HEX`, as `p2p ls --json` shows a
    /// file's hash): those a `p2p get blake3:HEX` fetches from.
    #[arg(long, value_name = "blake3:HEX")]
    pub has: Option<String>,
}

#[derive(Args, Debug)]
#[command(after_help = LS_EXAMPLES)]
pub(crate) struct LsArgs {
    /// Name of the peer.
    pub peer: String,
    #[command(flatten)]
    pub tracker: TrackerOpts,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = GET_EXAMPLES)]
pub(crate) struct GetArgs {
    /// Name of the peer; or the content's hash, `blake3:HEX`, or a ticket from `p2p share`
    /// (`p2p1...`): then no ID, the content comes from whoever has it.
    pub peer: String,
    /// File ID as `p2p ls` shows it (e.g. 001), or its path there (e.g. sub/a.txt).
    pub id: Option<String>,
    #[command(flatten)]
    pub tracker: TrackerOpts,
    /// Folder to save into. Else P2P_DOWNLOADS, else the config file's `downloads`.
    #[arg(long, default_value = DEFAULT_DOWNLOADS)]
    pub out: PathBuf,
    /// Machine-readable output (and, on stderr, one JSON line per recorded checkpoint).
    #[arg(long)]
    pub json: bool,
    /// Fail (keeping the verified part for a resume) when the peer is silent this long.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Never fsync: faster when the disk is slower than the network, and as safe as `cp`
    /// (a crash of p2p loses nothing; a power cut may lose the file, and a partial file left
    /// unsynced is discarded, not resumed, after a restart of the system).
    #[arg(long)]
    pub no_fsync: bool,
    /// Do not reserve the file's disk space up front. By default a download takes the space
    /// of the whole file when it starts, so that a disk too small fails it at once; without
    /// the reservation it fails when the disk fills, keeping the verified part for a resume.
    #[arg(long)]
    pub no_preallocate: bool,
    /// How long to keep asking a sender whose upload slots are all taken ("busy") before
    /// failing; 0 fails at once.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub busy_wait: Duration,
    /// Memory for data in flight, per download (what arrived out of order waits in it): with
    /// the sender's own limit, it caps the bytes in flight, so the speed on a long path.
    /// 16MiB covers 1 Gbit/s over a 130 ms round trip; give 32MiB for 1 Gbit/s x 250 ms
    /// (1MiB..1GiB).
    #[arg(long, default_value = "16MiB", value_parser = parse_window)]
    pub window: u64,
    /// Fetch from the named peer only. By default every other peer the tracker says has the
    /// same content sends a share of it too.
    #[arg(long)]
    pub one_source: bool,
    /// While downloading from many sources, serve the pieces verified so far to the other
    /// downloaders of the same content, as BitTorrent clients do: registers with the tracker
    /// as NAME (default get-XXXX) until the download ends. Off by default: a plain `get`
    /// tells nobody what it fetches.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "", conflicts_with = "one_source")]
    pub serve: Option<String>,
    /// Address this download listens on (what `--serve` registers; e.g. 0.0.0.0:7001 to be
    /// reached from other machines). Default: an ephemeral port on the loopback for a
    /// tracker on the loopback, else on every interface.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Seal the session with the peer (every peer accepts sealed sessions unless run with
    /// --no-secure): every message both ways encrypted and authenticated, and the peer's
    /// identity key proven (the one the tracker binds its name to, when it binds one). Fails
    /// when the peer does not accept sealed sessions. Other holders of the content serve
    /// their share in sealed sessions too (each proving a key of its own, its bytes checked
    /// against the named peer's piece table); a holder that does not accept sealed sessions
    /// is left out (after up to 3 s). With a ticket or `blake3:HEX`, every holder is asked
    /// in a sealed session of its own (the content hash checks every byte), and fails when
    /// none accepts one. Not for a peer found by its key on the DHT.
    #[arg(long, conflicts_with = "serve")]
    pub secure: bool,
    #[command(flatten)]
    pub dht: DhtOpts,
}

/// A download's in-flight memory budget (`--window`): a size from 1 MiB to 1 GiB.
fn parse_window(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    if !(1 << 20..=1 << 30).contains(&bytes) {
        return Err(format!("`{s}` is outside 1MiB..1GiB"));
    }
    Ok(bytes)
}

/// `p2p resolve KEY`: a key's record on the DHT.
#[derive(Args, Debug)]
pub(crate) struct ResolveArgs {
    /// The identity key: 64 hex digits (as `p2p peer --dht` prints it), or NAME@KEY for one
    /// peer of the key.
    pub key: String,
    /// Accepted, and implied: a record is looked up on the DHT.
    #[arg(long, hide = true)]
    pub dht: bool,
    /// A DHT node to join the DHT through, HOST:PORT (IPv4; repeatable). Else
    /// P2P_DHT_BOOTSTRAP, else the config file's `dht-bootstrap`, else the public nodes.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = Ipv4AddressParser)]
    pub dht_bootstrap: Vec<SocketAddr>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(after_help = DEMO_EXAMPLES)]
pub(crate) struct DemoArgs {
    /// Folder the seeding peer shares.
    #[arg(long, default_value = "./shared")]
    pub share: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// A command whose page to print (default: the page of p2p itself).
    #[arg(value_parser = ["tracker", "peer", "peers", "ls", "get", "resolve", "demo", "completions", "man", "config"])]
    pub command: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct ConfigArgs {
    /// Print only the config file's path (whether the file exists or not).
    #[arg(long, conflicts_with = "json")]
    pub path: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// A tracker address, to see it win over the environment and the file.
    #[arg(long, default_value = DEFAULT_TRACKER, value_name = "ADDR", value_parser = AddressParser)]
    pub tracker: SocketAddr,
    /// A peer name, likewise.
    #[arg(long)]
    pub name: Option<String>,
    /// A folder to share, likewise.
    #[arg(long, default_value = DEFAULT_SHARE)]
    pub share: PathBuf,
    /// A download folder, likewise.
    #[arg(long, default_value = DEFAULT_DOWNLOADS)]
    pub downloads: PathBuf,
    /// A transport, likewise.
    #[arg(long, default_value = "udp", value_parser = transport_values())]
    pub transport: TransportKind,
    /// DHT bootstrap nodes, likewise (repeatable).
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = Ipv4AddressParser)]
    pub dht_bootstrap: Vec<SocketAddr>,
    /// A tracker key, likewise.
    #[arg(long, value_name = "KEY", value_parser = parse_tracker_key)]
    pub tracker_key: Option<p2p_proto::identity::PublicKey>,
    /// Where each setting came from (filled after parsing).
    #[arg(skip)]
    pub origins: Vec<config::Origin>,
    /// The config file that was read (filled after parsing).
    #[arg(skip)]
    pub file: config::FileStatus,
}

/// Built-in defaults, used when neither a flag, the environment nor the config file sets them.
const DEFAULT_TRACKER: &str = "127.0.0.1:9000";
const DEFAULT_SHARE: &str = "./shared";
const DEFAULT_DOWNLOADS: &str = "./downloads";
