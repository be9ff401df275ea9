//! The tracker [`Registry`] target: scenarios of registrations, expiry and clock steps,
//! checked against a model.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::shared::Input;
use crate::tracker::{validate_name, RegisterError, Registry, RegistryConfig};
use crate::wire::TransportKind;

/// One step of a registry scenario.
#[derive(Clone, Debug)]
pub enum RegistryOp {
    /// `register(name, source, port, transport)`.
    Register {
        /// Index into [`REGISTRY_NAMES`].
        name: u8,
        /// Last octet of the source IP (`10.0.0.x`).
        ip: u8,
        /// Source port (ignored by the registry) and listening port.
        port: u16,
        /// UDP or TCP.
        tcp: bool,
    },
    /// `unregister(name, source_ip)`.
    Unregister {
        /// Index into [`REGISTRY_NAMES`].
        name: u8,
        /// Last octet of the source IP.
        ip: u8,
    },
    /// `expire(now)`.
    Expire,
    /// `list(now)` (checked after every op anyway).
    List,
    /// Advance the clock by this many milliseconds.
    Advance(u32),
}

/// The small name space the registry scenarios draw from (the last three are invalid names).
pub const REGISTRY_NAMES: [&str; 8] = ["alice", "bob", "carol", "dave", "eve", "", "a b", "x\n"];

/// Runs `ops` against a [`Registry`] with `config`, next to a model of which peer holds which
/// name until when, and checks: `len() <= max_peers`; `list()` has unique, sorted names and
/// only live entries at the address and transport of their last successful registration; a
/// live name is never taken over from another address or transport; `expire` drops only
/// expired entries and leaves none; `Full` only when every slot holds a live peer;
/// `unregister` succeeds only from the registered IP.
pub fn check_registry_ops(config: RegistryConfig, ops: &[RegistryOp]) {
    let max = config.max_peers;
    let ttl = config.ttl;
    let mut reg = Registry::new(config);
    let mut now = Instant::now();
    // name -> (addr, transport, valid_until) of the last successful registration.
    let mut model: BTreeMap<String, (SocketAddr, TransportKind, Instant)> = BTreeMap::new();
    let ip_of = |x: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, x % 4));
    for op in ops {
        match *op {
            RegistryOp::Register {
                name,
                ip,
                port,
                tcp,
            } => {
                let name = REGISTRY_NAMES[usize::from(name) % REGISTRY_NAMES.len()];
                let port = port % 4; // small, with port 0 (invalid) in range
                let transport = if tcp {
                    TransportKind::Tcp
                } else {
                    TransportKind::Udp
                };
                let source = SocketAddr::new(ip_of(ip), 40_000 + port);
                let addr = SocketAddr::new(source.ip(), port);
                let live = |m: &BTreeMap<String, (SocketAddr, TransportKind, Instant)>| {
                    m.values().filter(|e| e.2 > now).count()
                };
                let holder = model.get(name).filter(|e| e.2 > now).copied();
                let result = reg.register(now, name, source, port, transport);
                match &result {
                    Ok(_) => {
                        assert!(
                            validate_name(name).is_ok() && port != 0,
                            "accepted bad input"
                        );
                        if let Some((a, t, _)) = holder {
                            assert_eq!(
                                (a, t),
                                (addr, transport),
                                "live name `{name}` taken over from {a} by {addr}"
                            );
                        }
                        model.insert(name.to_string(), (addr, transport, now + ttl));
                    }
                    Err(RegisterError::NameTaken { holder: h, .. }) => {
                        let (a, t, _) = holder.expect("NameTaken for a name no live peer holds");
                        assert_eq!(*h, a, "NameTaken names the wrong holder");
                        assert!((a, t) != (addr, transport), "refresh refused");
                    }
                    Err(RegisterError::Full(n)) => {
                        assert_eq!(*n, max);
                        assert!(holder.is_none(), "refresh refused as full");
                        assert!(live(&model) >= max, "Full with free slots");
                    }
                    Err(RegisterError::BadName(_)) => assert!(validate_name(name).is_err()),
                    Err(RegisterError::BadPort) => assert_eq!(port, 0),
                    Err(RegisterError::TooManyNew) => {
                        panic!("the registry alone never limits new names (the tracker does)")
                    }
                    Err(RegisterError::NameBound { .. }) => {
                        panic!("an unsigned register never meets a binding it did not make")
                    }
                }
            }
            RegistryOp::Unregister { name, ip } => {
                let name = REGISTRY_NAMES[usize::from(name) % REGISTRY_NAMES.len()];
                let ip = ip_of(ip);
                if reg.unregister(name, ip) {
                    let (a, _, _) = model
                        .remove(name)
                        .expect("unregistered a name never registered");
                    assert_eq!(a.ip(), ip, "unregistered from another IP");
                }
            }
            RegistryOp::Expire => {
                for gone in reg.expire(now) {
                    let (_, _, until) = model.remove(&gone).expect("expired an unknown name");
                    assert!(until <= now, "expired the live entry `{gone}`");
                }
                assert_eq!(reg.len(), reg.list(now).len(), "expire left dead entries");
            }
            RegistryOp::List => {}
            RegistryOp::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
        }
        assert!(reg.len() <= max, "{} entries, limit {max}", reg.len());
        let list = reg.list(now);
        assert!(
            list.windows(2).all(|w| w[0].name < w[1].name),
            "list not unique and sorted: {list:?}"
        );
        for p in &list {
            let (a, t, until) = model
                .get(&*p.name)
                .unwrap_or_else(|| panic!("listed `{}` never registered", p.name));
            assert!(*until > now, "listed the expired entry `{}`", p.name);
            assert_eq!((p.addr, p.transport), (*a, *t), "listed a stale address");
        }
        let live = model.values().filter(|e| e.2 > now).count();
        assert_eq!(list.len(), live, "a live entry is missing from the list");
    }
}

/// Reads a registry scenario from `data` (config, then operations) and runs
/// [`check_registry_ops`] on it.
pub fn registry_target(data: &[u8]) {
    let mut input = Input { data };
    let config = RegistryConfig {
        ttl: Duration::from_millis(1 + u64::from(input.u16())),
        heartbeat: Duration::from_secs(1),
        max_peers: 1 + usize::from(input.u8() % 4),
    };
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < 4096 {
        ops.push(match input.u8() % 6 {
            0 | 1 => RegistryOp::Register {
                name: input.u8(),
                ip: input.u8(),
                port: u16::from(input.u8()),
                tcp: input.bool(),
            },
            2 => RegistryOp::Unregister {
                name: input.u8(),
                ip: input.u8(),
            },
            3 => RegistryOp::Expire,
            4 => RegistryOp::List,
            _ => RegistryOp::Advance(u32::from(input.u16())),
        });
    }
    check_registry_ops(config, &ops);
}
