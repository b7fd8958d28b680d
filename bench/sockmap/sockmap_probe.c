// Can a BPF sockmap take the Shuttle broker out of a channel's data path on this kernel?
// (issue 15; docs/shuttle.md, "Why the bytes still pass through the broker"). bench.py runs it
// in the Shuttle comparison (section 7 of docs/benchmarks.md); by hand:
//
//   gcc -O2 -o /tmp/sockmap_probe bench/sockmap/sockmap_probe.c -lpthread
//   sudo /tmp/sockmap_probe [MIB]      # about 20 s; needs CAP_BPF and CAP_NET_ADMIN
//
// One process plays all four sockets of a channel: the VM's client C, the broker's accepted
// socket A (C's peer), the broker's socket B connected to the target, and the target's server
// S (B's peer). For unix stream and loopback TCP it sends MIB MiB (default 1024) from C to S,
// one thread writing and one reading, along each path:
//
//   direct    C connected straight to S: the reference.
//   splice    the broker's way (crates/feather-shuttle/src/splice.rs): A -> pipe -> B, 1 MiB.
//   verdict   one SOCKHASH and one BPF_PROG_TYPE_SK_SKB stream-verdict program for every
//             connection (as one broker would have): what arrives at A is sent out of B by
//             bpf_sk_redirect_hash, keyed by the socket cookie of the skb's owner (the kernel's
//             number, nothing a VM chooses). The broker only waits for A's end (POLLRDHUP) and
//             then shuts B's writing, as splice does after its last byte; for TCP it first waits
//             until B has written all A received (TCP_INFO), as the reverted prototype did.
//             "+4MiB": A's and B's send buffers forced to 4 MiB (SO_SNDBUFFORCE).
//   msg       Cilium's shape, TCP only: an SK_MSG program on C's sendmsg puts the bytes straight
//             into S's receive side (bpf_msg_redirect_hash with BPF_F_INGRESS). C and S are the
//             VMs' own sockets; a broker could only get them into its map with a sock_ops
//             program on the VMs' cgroups.
//
// Each prints one tab-separated line: kind, path, MiB sent, MiB/s, what had arrived when S saw
// its end ("all", "lost:N" bytes, "changed"), and how many KiB C got rid of, without blocking
// for 2 s, into an S that reads nothing: the path's flow control ("capN": stopped at the 256
// MiB cap, so none). For unix, a "msg" line says whether an SK_MSG program runs at all for a
// unix socket's sends ("not-run": a program dropping everything let the byte through).
// The programs are hand-assembled, as feather's are (crates/feather-sys/src/bpf.rs).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif
#define CHUNK (1 << 20)
#define NOREAD_CAP (256L << 20)
#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})

static int tcp;

static void die(const char *what) { perror(what); exit(1); }
static long bpf(int cmd, union bpf_attr *attr) { return syscall(__NR_bpf, cmd, attr, sizeof(*attr)); }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static int sockhash(void) {
    union bpf_attr a = {.map_type = BPF_MAP_TYPE_SOCKHASH, .key_size = 8, .value_size = 4, .max_entries = 64};
    int fd = bpf(BPF_MAP_CREATE, &a);
    if (fd < 0) die("create a sockhash");
    return fd;
}

static int load(int type, int attach_type, struct bpf_insn *insns, int count) {
    static char log[65536];
    union bpf_attr a = {.prog_type = type, .insns = (uintptr_t)insns, .insn_cnt = count,
                        .license = (uintptr_t)"GPL", .log_buf = (uintptr_t)log, .log_size = sizeof log,
                        .log_level = 1, .expected_attach_type = attach_type};
    int fd = bpf(BPF_PROG_LOAD, &a);
    if (fd < 0) { fprintf(stderr, "%s\n", log); die("load a program"); }
    return fd;
}

static void attach(int map, int program, int type) {
    union bpf_attr a = {.target_fd = map, .attach_bpf_fd = program, .attach_type = type};
    if (bpf(BPF_PROG_ATTACH, &a)) die("attach a program to its map");
}

static void put(int map, uint64_t key, int socket) {
    uint32_t value = socket;
    union bpf_attr a = {.map_fd = map, .key = (uintptr_t)&key, .value = (uintptr_t)&value, .flags = BPF_ANY};
    if (bpf(BPF_MAP_UPDATE_ELEM, &a)) die("put a socket into the sockhash");
}

// TCP's counts, which order a direction's end after its last byte (unix sockets have none):
// what a socket received (its peer's FIN counts one), and what was written into it (taken by
// the peer, or still queued).
static uint64_t received(int socket) {
    struct tcp_info info; socklen_t l = sizeof info;
    if (getsockopt(socket, IPPROTO_TCP, TCP_INFO, &info, &l)) die("TCP_INFO");
    return info.tcpi_bytes_received;
}
static uint64_t written(int socket) {
    struct tcp_info info; socklen_t l = sizeof info; int queued = 0;
    if (getsockopt(socket, IPPROTO_TCP, TCP_INFO, &info, &l) || ioctl(socket, SIOCOUTQ, &queued)) die("TCP_INFO");
    return info.tcpi_bytes_acked + queued;
}

static uint64_t cookie(int socket) {
    uint64_t c; socklen_t l = sizeof c;
    if (getsockopt(socket, SOL_SOCKET, SO_COOKIE, &c, &l)) die("SO_COOKIE");
    return c;
}

// Stream verdict: an empty skb (a TCP FIN) stays; anything else goes out of the socket stored
// under the skb owner's cookie. SK_PASS either way, so a failed redirect leaves the bytes
// readable where they arrived rather than dropping them.
static int verdict_program(int map) {
    struct bpf_insn p[] = {
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),                 // r6 = skb
        INSN(BPF_LDX | BPF_MEM | BPF_W, 2, 1, 0, 0),                   // r2 = skb->len
        INSN(BPF_JMP | BPF_JEQ | BPF_K, 2, 0, 9, 0),                   // if r2 == 0: pass
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie), // r0 = cookie(skb->sk)
        INSN(BPF_STX | BPF_MEM | BPF_DW, 10, 0, -8, 0),                // key on the stack
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),
        INSN(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, map), INSN(0, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -8),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),                 // out of its sending side
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, SK_PASS),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    return load(BPF_PROG_TYPE_SK_SKB, BPF_SK_SKB_STREAM_VERDICT, p, sizeof p / sizeof *p);
}

// Message verdict: every send goes into the receive side of the socket under key 1 of `map`.
static int msg_program(int map) {
    struct bpf_insn p[] = {
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, 1),
        INSN(BPF_STX | BPF_MEM | BPF_DW, 10, 2, -8, 0),
        INSN(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, map), INSN(0, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -8),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, BPF_F_INGRESS),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_msg_redirect_hash),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    return load(BPF_PROG_TYPE_SK_MSG, BPF_SK_MSG_VERDICT, p, sizeof p / sizeof *p);
}

static int drop_program(void) {
    struct bpf_insn p[] = {INSN(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, SK_DROP), INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)};
    return load(BPF_PROG_TYPE_SK_MSG, BPF_SK_MSG_VERDICT, p, 2);
}

// A connected pair through a listener: *client connected, *accepted its peer.
static void connection(int *client, int *accepted) {
    int listener;
    if (tcp) {
        struct sockaddr_in at = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t size = sizeof at;
        listener = socket(AF_INET, SOCK_STREAM, 0);
        if (bind(listener, (void *)&at, size) || listen(listener, 4) || getsockname(listener, (void *)&at, &size)) die("listen");
        *client = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(*client, (void *)&at, size)) die("connect");
    } else {
        static int n;
        struct sockaddr_un at = {.sun_family = AF_UNIX};
        snprintf(at.sun_path, sizeof at.sun_path, "/tmp/sockmap-probe-%d-%d", getpid(), n++);
        listener = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(listener, (void *)&at, sizeof at) || listen(listener, 4)) die("listen");
        *client = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(*client, (void *)&at, sizeof at)) die("connect");
        unlink(at.sun_path);
    }
    *accepted = accept(listener, 0, 0);
    if (*accepted < 0) die("accept");
    close(listener);
}

// What crosses: the byte at stream position p is pattern[p % PERIOD], a period that is no
// multiple of any read or write size, so a lost, doubled or reordered chunk shows; the reader
// compares with memcmp so that checking costs little beside the transfer.
#define PERIOD (CHUNK + 7)
static unsigned char pattern[PERIOD + CHUNK];

struct flow { int socket; long bytes; int intact; };

static void *write_all(void *arg) {
    struct flow *f = arg;
    for (long at = 0; at < f->bytes;) {
        long n = f->bytes - at < CHUNK ? f->bytes - at : CHUNK;
        n = write(f->socket, pattern + at % PERIOD, n);
        if (n <= 0) die("write");
        at += n;
    }
    shutdown(f->socket, SHUT_WR);
    return 0;
}

// Reads to the end, or to `bytes` when the end cannot come (msg: C's end goes to A).
static void *read_all(void *arg) {
    struct flow *f = arg;
    unsigned char *buffer = malloc(CHUNK);
    long want = f->bytes;
    f->bytes = 0;
    f->intact = 1;
    for (;;) {
        long n = read(f->socket, buffer, CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("read");
        if (n == 0) break;
        if (memcmp(buffer, pattern + f->bytes % PERIOD, n)) f->intact = 0;
        f->bytes += n;
        if (want && f->bytes >= want) break;
    }
    free(buffer);
    return 0;
}

struct pump { int from, to; };
static void *splice_pump(void *arg) {
    struct pump *p = arg;
    int pipe_ends[2];
    if (pipe(pipe_ends)) die("pipe");
    fcntl(pipe_ends[1], F_SETPIPE_SZ, CHUNK);
    for (;;) {
        ssize_t got = splice(p->from, 0, pipe_ends[1], 0, CHUNK, SPLICE_F_MOVE);
        if (got <= 0) break;
        while (got > 0) {
            ssize_t put = splice(pipe_ends[0], 0, p->to, 0, got, SPLICE_F_MOVE);
            if (put <= 0) goto out;
            got -= put;
        }
    }
out:
    shutdown(p->to, SHUT_WR);
    close(pipe_ends[0]); close(pipe_ends[1]);
    return 0;
}

enum path { DIRECT, SPLICE, VERDICT, MSG };
static const char *names[] = {"direct", "splice", "verdict", "msg"};

struct channel { int c, a, b, s; pthread_t pumps[2]; struct pump ways[2]; int map, program, target_map; };

// Sets up C..S along `path`; `buffer` > 0 forces A's and B's send buffers (verdict's in-flight).
static void open_channel(struct channel *ch, enum path path, int buffer) {
    memset(ch, 0, sizeof *ch);
    ch->a = ch->b = -1;
    if (path == DIRECT) { connection(&ch->c, &ch->s); goto done; }
    connection(&ch->c, &ch->a);
    connection(&ch->b, &ch->s);
    if (buffer) {
        setsockopt(ch->a, SOL_SOCKET, SO_SNDBUFFORCE, &buffer, sizeof buffer);
        setsockopt(ch->b, SOL_SOCKET, SO_SNDBUFFORCE, &buffer, sizeof buffer);
    }
    if (path == SPLICE) {
        ch->ways[0] = (struct pump){ch->a, ch->b};
        ch->ways[1] = (struct pump){ch->b, ch->a};
        for (int i = 0; i < 2; i++) pthread_create(&ch->pumps[i], 0, splice_pump, &ch->ways[i]);
    } else if (path == VERDICT) {
        ch->map = sockhash();
        ch->program = verdict_program(ch->map);
        attach(ch->map, ch->program, BPF_SK_SKB_STREAM_VERDICT);
        // A TCP skb belongs to the socket that received it; a unix skb to the one that sent it
        // (so a broker would need the VM's client's cookie, from unix_diag in the VM's netns).
        put(ch->map, cookie(tcp ? ch->a : ch->c), ch->b);
        put(ch->map, cookie(tcp ? ch->b : ch->s), ch->a);
    } else {
        ch->target_map = sockhash();
        ch->map = sockhash();
        ch->program = msg_program(ch->target_map);
        attach(ch->map, ch->program, BPF_SK_MSG_VERDICT);
        put(ch->target_map, 1, ch->s);
        put(ch->map, 1, ch->c);
    }
done:
    if (tcp) {
        int one = 1;
        setsockopt(ch->c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(ch->s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
}

static void close_channel(struct channel *ch) {
    int fds[] = {ch->c, ch->a, ch->b, ch->s, ch->map, ch->program, ch->target_map};
    for (unsigned i = 0; i < sizeof fds / sizeof *fds; i++)
        if (fds[i] > 0) { if (i < 4) shutdown(fds[i], SHUT_RDWR); }
    if (ch->ways[0].to) for (int i = 0; i < 2; i++) pthread_join(ch->pumps[i], 0);
    for (unsigned i = 0; i < sizeof fds / sizeof *fds; i++) if (fds[i] > 0) close(fds[i]);
}

// Bulk: MiB/s from C to S; *missing: how many bytes S lacked when its end came (-1: some
// arrived changed).
static double bulk(enum path path, int buffer, long mib, long *missing) {
    struct channel ch;
    open_channel(&ch, path, buffer);
    struct flow out = {ch.c, mib << 20, 1}, in = {ch.s, path == MSG ? mib << 20 : 0, 0};
    pthread_t writer, reader;
    // TCP's counts before the first byte: what B will have written and A received from here.
    uint64_t base_a = 0, base_b = 0;
    if (path == VERDICT && tcp) { base_a = received(ch.a); base_b = written(ch.b); }
    double start = now();
    pthread_create(&writer, 0, write_all, &out);
    pthread_create(&reader, 0, read_all, &in);
    if (path == VERDICT) {
        // The broker's part: on A's end, end B's writing. Its last bytes may still wait in the
        // kernel's worker: TCP can wait until B has taken all that A received (as the reverted
        // prototype did, polling); unix has nothing to wait on.
        struct pollfd end = {ch.a, POLLRDHUP, 0};
        poll(&end, 1, -1);
        while (tcp && written(ch.b) - base_b < received(ch.a) - base_a - 1) usleep(200);
        shutdown(ch.b, SHUT_WR);
    }
    pthread_join(writer, 0);
    pthread_join(reader, 0);
    double seconds = now() - start;
    *missing = in.intact ? out.bytes - in.bytes : -1;
    close_channel(&ch);
    return in.bytes / 1048576.0 / seconds;
}

// Flow control: how many KiB C gets rid of while S reads nothing (NOREAD_CAP: no bound).
static long no_reader(enum path path, int buffer) {
    struct channel ch;
    open_channel(&ch, path, buffer);
    fcntl(ch.c, F_SETFL, O_NONBLOCK);
    char *chunk = calloc(1, 1 << 16);
    long pushed = 0;
    while (pushed < NOREAD_CAP) {
        ssize_t n = write(ch.c, chunk, 1 << 16);
        if (n > 0) { pushed += n; continue; }
        if (errno != EAGAIN) die("write");
        struct pollfd writable = {ch.c, POLLOUT, 0};
        if (poll(&writable, 1, 2000) == 0) break;
    }
    free(chunk);
    close_channel(&ch);
    return pushed >> 10;
}

// One line: socket kind, path, MiB sent, MiB/s, what arrived before the end (all, lost:N
// bytes, changed), KiB a client pushed into a server that reads nothing (capN: stopped at the
// cap, no flow control).
static void row(enum path path, int buffer, long mib) {
    long missing;
    double rate = bulk(path, buffer, mib, &missing);
    long pushed = no_reader(path, buffer);
    printf("%s\t%s%s\t%ld\t%.0f\t", tcp ? "tcp" : "unix", names[path], buffer ? "+4MiB" : "", mib, rate);
    if (missing == 0) printf("all\t");
    else if (missing > 0) printf("lost:%ld\t", missing);
    else printf("changed\t");
    printf("%s%ld\n", pushed >= NOREAD_CAP >> 10 ? "cap" : "", pushed);
}

// Does an SK_MSG program see a unix socket's sends? One that drops everything is put on C.
static void msg_on_unix(void) {
    int c, a, map = sockhash(), program = drop_program();
    connection(&c, &a);
    attach(map, program, BPF_SK_MSG_VERDICT);
    put(map, 1, c);
    ssize_t n = write(c, "x", 1);
    struct pollfd readable = {a, POLLIN, 0};
    int arrived = poll(&readable, 1, 1000);
    printf("unix\tmsg\t-\t-\t%s\t-\n", n == 1 && arrived == 1 ? "not-run" : "run");
    close(c); close(a); close(map); close(program);
}

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 1024;
    signal(SIGPIPE, SIG_IGN);
    for (long i = 0; i < PERIOD + CHUNK; i++) pattern[i] = (unsigned char)((i % PERIOD) * 2654435761u >> 13);
    setvbuf(stdout, 0, _IOLBF, 0);
    printf("# kind\tpath\tMiB\tMiB/s\tarrived\tpushed KiB, no reader\n");
    for (tcp = 0; tcp < 2; tcp++) {
        row(DIRECT, 0, mib);
        row(SPLICE, 0, mib);
        // The redirect with default buffers is slow: fewer bytes keep the run short.
        row(VERDICT, 0, mib / 16);
        row(VERDICT, 4 << 20, mib / 4);
        if (tcp) row(MSG, 0, mib);
        else msg_on_unix();
    }
    return 0;
}
