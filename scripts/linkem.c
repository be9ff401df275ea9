/*
 * linkem.c: the project's link emulator, for kernels without `tc netem` (as on the build
 * machines). It opens a TUN device in each of two network namespaces and carries IP packets
 * between them, each direction through the same model of a path:
 *
 *   sender -> [loss] -> [drop-tail queue] -> [bottleneck link, RATE] -> [propagation delay] -> receiver
 *                  \-> reordered packets skip the queue and the delay (netem's "reorder")
 *
 * usage: linkem NS_A TUN_A NS_B TUN_B DELAY_US LOSS_PCT [REORDER_PCT [REORDER_CORR_PCT [SEED]]]
 *   NS_A, NS_B   /run/netns/NAME paths; TUN_A, TUN_B the devices to create in them
 *   DELAY_US     one-way propagation delay, each direction
 *   LOSS_PCT     random loss, each direction (independent per packet)
 *   REORDER_PCT  packets sent at once, ahead of the delayed ones (with correlation CORR_PCT)
 *   SEED         of the random choices (default: the clock)
 * Environment (a bottleneck, each direction; off when LINKEM_RATE_MBIT is unset or 0):
 *   LINKEM_RATE_MBIT  the link's rate, Mbit/s: packets leave the queue at this pace
 *   LINKEM_QUEUE_MS   the queue in front of it holds this long of traffic at the rate (default
 *                     100, a home router's buffer); a packet that would wait longer is dropped
 * Runs until SIGINT/SIGTERM, then prints its counters on stderr (a line per direction).
 *
 * Build: cc -O2 -o linkem linkem.c   (scripts/bench.sh does it). Modelled on the team's
 * baseline tool (tools/baseline/linkem.c), with the same command line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

enum { MTU_SLOT = 2048, RING = 1 << 15, BATCH = 256 };

/* A packet waiting for its time to be delivered. */
struct slot {
    uint64_t due;
    uint16_t len;
    unsigned char data[MTU_SLOT];
};

/* One direction of the path. */
struct way {
    const char *name;
    int from, to;
    struct slot *ring; /* FIFO: due times only grow, the link being FIFO */
    unsigned head, count;
    uint64_t link_free; /* when the bottleneck has sent all it accepted (ns) */
    uint32_t last_reorder; /* correlated random state for reordering */
    uint64_t seen, sent, lost, reordered, dropped, failed;
};

static volatile sig_atomic_t stopping;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static uint64_t rng;
/* xorshift64*: fast, good enough for loss decisions, and replayable from SEED. */
static uint32_t random32(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545F4914F6CDD1DULL) >> 32);
}

/* A random value correlated with the last one by `corr` (0..2^32-1), as netem does. */
static uint32_t correlated(uint32_t *last, uint32_t corr) {
    uint64_t fresh = random32();
    if (!corr) return (uint32_t)fresh;
    uint64_t weight = (uint64_t)corr + 1;
    *last = (uint32_t)((fresh * ((1ULL << 32) - weight) + (uint64_t)*last * weight) >> 32);
    return *last;
}

static uint64_t clock_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Creates TUN device `name` in the namespace at `ns_path` (non-blocking). */
static int open_tun(const char *ns_path, const char *name) {
    int ns = open(ns_path, O_RDONLY | O_CLOEXEC);
    if (ns < 0) die(ns_path);
    if (setns(ns, CLONE_NEWNET) < 0) die("setns");
    close(ns);
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) die("/dev/net/tun");
    struct ifreq req;
    memset(&req, 0, sizeof req);
    req.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(req.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &req) < 0) die("TUNSETIFF");
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
    return fd;
}

static void deliver(struct way *w, const unsigned char *p, size_t n) {
    if (write(w->to, p, n) < 0) w->failed++;
    else w->sent++;
}

/* Delivers every packet whose time has come. */
static void deliver_due(struct way *w, uint64_t now) {
    while (w->count && w->ring[w->head].due <= now) {
        struct slot *s = &w->ring[w->head];
        deliver(w, s->data, s->len);
        w->head = (w->head + 1) % RING;
        w->count--;
    }
}

/* The path's settings, shared by both directions. */
struct path {
    uint64_t delay_ns, queue_ns;
    double ns_per_byte; /* 0: no bottleneck */
    uint32_t loss, reorder, corr; /* thresholds out of 2^32 */
};

/* Reads what waits on `w->from` and sends each packet down the path. */
static void take_in(struct way *w, const struct path *p) {
    for (int k = 0; k < BATCH; k++) {
        struct slot *s = w->count < RING ? &w->ring[(w->head + w->count) % RING] : NULL;
        unsigned char spill[MTU_SLOT];
        unsigned char *buf = s ? s->data : spill;
        ssize_t n = read(w->from, buf, MTU_SLOT);
        if (n <= 0) return;
        w->seen++;
        if (p->loss && random32() < p->loss) { w->lost++; continue; }
        int skip = p->reorder && correlated(&w->last_reorder, p->corr) < p->reorder;
        if (skip || (!p->delay_ns && !p->ns_per_byte)) {
            if (skip) w->reordered++;
            deliver(w, buf, (size_t)n);
            continue;
        }
        if (!s) { w->dropped++; continue; }
        uint64_t now = clock_ns(), leaves = now;
        if (p->ns_per_byte > 0) {
            uint64_t start = w->link_free > now ? w->link_free : now;
            if (start - now > p->queue_ns) { w->dropped++; continue; } /* queue full */
            leaves = start + (uint64_t)(p->ns_per_byte * (double)n);
            w->link_free = leaves;
        }
        s->len = (uint16_t)n;
        s->due = leaves + p->delay_ns;
        w->count++;
    }
}

static uint32_t fraction(double pct) { return (uint32_t)(pct / 100.0 * 4294967295.0); }

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s NS_A TUN_A NS_B TUN_B DELAY_US LOSS_PCT "
                        "[REORDER_PCT [REORDER_CORR_PCT [SEED]]]\n", argv[0]);
        return 2;
    }
    struct path p;
    memset(&p, 0, sizeof p);
    p.delay_ns = strtoull(argv[5], NULL, 10) * 1000ULL;
    p.loss = fraction(atof(argv[6]));
    p.reorder = argc > 7 ? fraction(atof(argv[7])) : 0;
    p.corr = argc > 8 ? fraction(atof(argv[8])) : 0;
    rng = argc > 9 ? strtoull(argv[9], NULL, 10) : clock_ns();
    if (!rng) rng = 0x9E3779B97F4A7C15ULL;
    const char *rate = getenv("LINKEM_RATE_MBIT"), *queue = getenv("LINKEM_QUEUE_MS");
    double mbit = rate ? atof(rate) : 0.0;
    p.ns_per_byte = mbit > 0 ? 8000.0 / mbit : 0.0;
    p.queue_ns = (uint64_t)((queue ? atof(queue) : 100.0) * 1e6);

    int a = open_tun(argv[1], argv[2]), b = open_tun(argv[3], argv[4]);
    struct way ways[2] = {
        {.name = "A->B", .from = a, .to = b},
        {.name = "B->A", .from = b, .to = a},
    };
    for (int i = 0; i < 2; i++)
        if (!(ways[i].ring = malloc(sizeof(struct slot) * RING))) die("malloc");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fprintf(stderr, "linkem ready: delay=%lluus loss=%s%% reorder=%s%% rate=%.1fMbit queue=%.0fms\n",
            (unsigned long long)(p.delay_ns / 1000), argv[6], argc > 7 ? argv[7] : "0", mbit,
            (double)p.queue_ns / 1e6);

    while (!stopping) {
        uint64_t now = clock_ns(), next = UINT64_MAX;
        for (int i = 0; i < 2; i++)
            if (ways[i].count && ways[i].ring[ways[i].head].due < next)
                next = ways[i].ring[ways[i].head].due;
        struct timespec wait, *until = NULL;
        if (next != UINT64_MAX) {
            uint64_t left = next > now ? next - now : 0;
            wait.tv_sec = (time_t)(left / 1000000000ULL);
            wait.tv_nsec = (long)(left % 1000000000ULL);
            until = &wait;
        }
        struct pollfd fds[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
        int ready = ppoll(fds, 2, until, NULL);
        if (ready < 0 && errno != EINTR) die("ppoll");
        for (int i = 0; i < 2 && ready > 0; i++)
            if (fds[i].revents & POLLIN) take_in(&ways[i], &p);
        now = clock_ns();
        deliver_due(&ways[0], now);
        deliver_due(&ways[1], now);
    }
    for (int i = 0; i < 2; i++)
        fprintf(stderr, "linkem %s: rx=%llu fwd=%llu lost=%llu reordered=%llu qdrop=%llu werr=%llu\n",
                ways[i].name, (unsigned long long)ways[i].seen, (unsigned long long)ways[i].sent,
                (unsigned long long)ways[i].lost, (unsigned long long)ways[i].reordered,
                (unsigned long long)ways[i].dropped, (unsigned long long)ways[i].failed);
    return 0;
}
