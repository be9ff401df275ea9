#!/usr/bin/env bash
# A NAT lab in network namespaces: two private LANs, each behind a router that masquerades,
# joined through a "public" router namespace where the tracker runs.
#
#   LAN A 10.1.0.0/24          public side                     LAN B 192.168.2.0/24
#   [P-a] 10.1.0.2 --- 10.1.0.1 [P-ra] 172.16.1.2 --- 172.16.1.1 [P-pub] 172.16.2.1 --- 172.16.2.2 [P-rb] 192.168.2.1 --- 192.168.2.2 [P-b]
#
# P-pub routes between the two routers and is where the tracker listens (172.16.0.1, on its
# lo: listen on that address, not 0.0.0.0). Each router does `iptables -t nat -A POSTROUTING -o wan -j MASQUERADE`:
# Linux keeps the source port when it can and reuses a mapping for every destination
# (endpoint-independent mapping, a "cone"); filtering is per remote address and port.
# With --symmetric a|b|both, that router masquerades with --random-fully (a new random port
# per destination: symmetric-like, which defeats hole punching).
#
# P-pub being a router between the two NATs matters: a datagram sent with TTL 2 from a LAN
# leaves its own router (which creates the mapping) and dies in P-pub, before the other
# router, which is what hole punching through Linux NATs needs (see docs/NAT.md).
#
# Every address is private and lives only inside these namespaces. Names carry a prefix
# with the PID of `up` (p2pnat-PID), so parallel labs never collide.
#
# Usage (as root):
#   scripts/nat-lab.sh up [--symmetric a|b|both] [--prefix P]   prints the prefix
#   scripts/nat-lab.sh exec P NS CMD...     NS: pub, ra, rb, a, b
#   scripts/nat-lab.sh down P               removes every namespace of P (always safe)
#   scripts/nat-lab.sh addr NS              the lab address of NS (a, b, ra, rb, pub)
set -euo pipefail

NODES=(pub ra rb a b)

die() { echo "nat-lab: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (network namespaces and iptables)"
    ip netns list >/dev/null 2>&1 || die "ip netns does not work here"
}

ensure_iptables() {
    if ! command -v iptables >/dev/null 2>&1; then
        echo "nat-lab: installing iptables" >&2
        (apt-get update && apt-get install -y iptables) >/dev/null 2>&1 \
            || die "iptables missing and could not be installed"
    fi
}

addr_of() {
    case "$1" in
        a) echo 10.1.0.2 ;;
        b) echo 192.168.2.2 ;;
        ra) echo 172.16.1.2 ;;
        rb) echo 172.16.2.2 ;;
        pub) echo 172.16.0.1 ;;
        *) die "no node $1 (pub, ra, rb, a, b)" ;;
    esac
}

down() {
    local p=$1
    [[ "$p" =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad prefix $p"
    for n in "${NODES[@]}"; do
        if ip netns pids "$p-$n" >/dev/null 2>&1; then
            # Processes still inside (a test that failed half-way): end them, they are ours.
            for pid in $(ip netns pids "$p-$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        fi
        ip netns del "$p-$n" 2>/dev/null || true
    done
}

# link NS1 IF1 NS2 IF2: a veth pair created straight inside the two namespaces.
link() {
    ip link add name "$2" netns "$1" type veth peer name "$4" netns "$3"
    ip -n "$1" link set "$2" up
    ip -n "$3" link set "$4" up
}

up() {
    local p="p2pnat-$$" sym=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --symmetric) sym=$2; shift 2 ;;
            --prefix) p=$2; shift 2 ;;
            *) die "unknown option $1" ;;
        esac
    done
    case "$sym" in ""|a|b|both) ;; *) die "--symmetric takes a, b or both" ;; esac
    need_root
    ensure_iptables
    trap 'down "$p"' ERR
    for n in "${NODES[@]}"; do
        ip netns add "$p-$n"
        ip -n "$p-$n" link set lo up
    done
    # Public side: pub routes between the routers' WAN links.
    link "$p-pub" wa "$p-ra" wan
    link "$p-pub" wb "$p-rb" wan
    ip -n "$p-pub" addr add 172.16.1.1/24 dev wa
    ip -n "$p-pub" addr add 172.16.2.1/24 dev wb
    # The tracker's own address: a UDP server on a multi-homed host answers from the address
    # of the way out, which the NATs would not match; one address on lo, listened on, avoids it.
    ip -n "$p-pub" addr add 172.16.0.1/32 dev lo
    ip -n "$p-ra" addr add 172.16.1.2/24 dev wan
    ip -n "$p-rb" addr add 172.16.2.2/24 dev wan
    ip -n "$p-ra" route add default via 172.16.1.1
    ip -n "$p-rb" route add default via 172.16.2.1
    # LANs.
    link "$p-ra" lan "$p-a" eth0
    link "$p-rb" lan "$p-b" eth0
    ip -n "$p-ra" addr add 10.1.0.1/24 dev lan
    ip -n "$p-a" addr add 10.1.0.2/24 dev eth0
    ip -n "$p-a" route add default via 10.1.0.1
    ip -n "$p-rb" addr add 192.168.2.1/24 dev lan
    ip -n "$p-b" addr add 192.168.2.2/24 dev eth0
    ip -n "$p-b" route add default via 192.168.2.1
    for r in pub ra rb; do
        ip netns exec "$p-$r" sysctl -qw net.ipv4.ip_forward=1
    done
    for r in a b; do
        local extra=()
        if [ "$sym" = "$r" ] || [ "$sym" = both ]; then extra=(--random-fully); fi
        ip netns exec "$p-r$r" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE "${extra[@]}"
        # Nothing from the public side reaches the LAN unless a mapping lets it back in.
        ip netns exec "$p-r$r" iptables -A FORWARD -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        ip netns exec "$p-r$r" iptables -A FORWARD -i wan -j DROP
    done
    trap - ERR
    echo "$p"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    up) up "$@" ;;
    down) [ $# = 1 ] || die "usage: down PREFIX"; need_root; down "$1" ;;
    exec)
        [ $# -ge 3 ] || die "usage: exec PREFIX NS CMD..."
        p=$1 n=$2; shift 2
        exec ip netns exec "$p-$n" "$@" ;;
    addr) [ $# = 1 ] || die "usage: addr NS"; addr_of "$1" ;;
    *) die "usage: $0 up [--symmetric a|b|both] [--prefix P] | exec P NS CMD... | down P | addr NS" ;;
esac
