/*
 * blast: the media load of the relay benchmark, both legs of N calls in ONE single-threaded process
 * (the harness gets one core, the relay under test the other).  Loopback only.
 *
 *   browser leg: SRTP (AEAD_AES_128_GCM or AES_CM_128_HMAC_SHA1_80, encrypted here with each call's
 *                session keys) from the browser socket to the relay's browser-facing port, and SRTP
 *                back from the relay, decrypted and authenticated here;
 *   phone leg:   plain RTP from the phone socket to the relay's SIP-facing port, and back.
 *
 * Every payload carries its real send time (CLOCK_REALTIME ns), the flow and the packet index, so
 * the receiver measures the latency the relay adds (loopback included) and RFC 3550 jitter. Latency is
 * to the datagram's ARRIVAL in the harness's socket (the kernel's receive timestamp, SO_TIMESTAMPNS, on
 * the same clock): what the relay added, not how late this single-threaded harness got round to reading
 * it; the time to the read is reported beside it (read_latency_us), the measure of sessions 1-5.
 *
 * Build: gcc -O2 -Wall -o blast blast.c -lcrypto
 * Usage: blast -F FLOWFILE -B BROWSER_FD -H PHONE_FD -r PPS_PER_DIRECTION -t SECONDS
 *              [-p RELAY_PID[,PID...]] [-c RELAY_CPU] [-w DRAIN_MS] [-o INDEX_BASE] [-d both|b2p|p2b]
 *   -p: the relay's processes (a multi-worker bridge: supervisor and workers), CPU summed over all;
 *   -c -1: the relay is not pinned, "foreign" load is counted over every CPU.
 *   The two sockets are inherited, already bound (the harness did ICE/DTLS and SIP on them).
 *   FLOWFILE, one line per call:
 *     RELAY_BROWSER_PORT RELAY_PHONE_PORT SSRC_B SSRC_P TXPROF TXKEY TXSALT TXAUTH RXPROF RXKEY RXSALT RXAUTH [SRC]
 *   (PROF gcm|cm80, hex keys, AUTH "-" for gcm).  The relay answers from the port we send to.
 *   SRC (optional, a 127.0.0.0/8 address): the browser leg's own source address, for a relay that serves every
 *   browser leg on ONE port (the bridge's rtp_browser_port): each call's SRTP leaves the shared browser socket
 *   (bound to 0.0.0.0) from its address (IP_PKTINFO), and the relay's replies are told apart by the address they
 *   come to (IP_PKTINFO on receive), as a real browser's would be by its port.
 *   Packet j goes to flow j % N with index INDEX_BASE + j / N (RTP seq = index & 0xffff, ROC = index >> 16),
 *   so a later step on the same calls continues the SRTP sequence (-o); a packet received with an
 *   index below INDEX_BASE was sent by an earlier run: counted as late_from_earlier_run, not received.
 *   Hard limits: SECONDS <= 120, PPS <= 1,000,000, N <= 4096.
 * Output: one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXPKT 1500
#define MAXFLOWS 4096
#define PAYLOAD 160

typedef struct {
    int gcm;
    uint8_t key[16], salt[14], auth[20];
    EVP_CIPHER_CTX *ctx;
} keys_t;

typedef struct {
    int bport, pport;
    uint32_t ssrc_b, ssrc_p;
    keys_t tx, rx;
    /* receive state, browser side (SRTP from the relay): ROC estimation (RFC 3711 3.3.1) */
    int rx_started;
    uint32_t rx_roc;
    uint16_t rx_seq;
    /* RFC 3550 jitter per direction: 0 = to phone (b2p), 1 = to browser (p2b) */
    double jit[2];
    int64_t last_transit[2];
    int have_transit[2];
    long long got[2];
} flow_t;

static flow_t flows[MAXFLOWS];
static int nflows;
static int16_t port_flow_b[65536], port_flow_p[65536];
static int16_t addr_flow_b[65536]; /* with SRC: the low 16 bits of the browser leg's address -> flow */
static struct in_addr flow_src[MAXFLOWS];
static int spread; /* some flow has its own SRC */

/* the payload's send stamp and the receive side: the clock of the kernel's SO_TIMESTAMPNS */
static int64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *m) { perror(m); exit(2); }

static int unhex(const char *s, uint8_t *out, int n) {
    if (strcmp(s, "-") == 0) { memset(out, 0, n); return 0; }
    if ((int)strlen(s) != 2 * n) return -1;
    for (int i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

static void keys_init(keys_t *k, const char *prof, const char *key, const char *salt, const char *auth) {
    k->gcm = strcmp(prof, "gcm") == 0;
    if (!k->gcm && strcmp(prof, "cm80") != 0) { fprintf(stderr, "bad profile %s\n", prof); exit(2); }
    if (unhex(key, k->key, 16) || unhex(salt, k->salt, k->gcm ? 12 : 14) || unhex(auth, k->auth, k->gcm ? 0 : 20)) {
        fprintf(stderr, "bad key material\n");
        exit(2);
    }
    k->ctx = EVP_CIPHER_CTX_new();
    if (k->gcm) {
        EVP_CipherInit_ex(k->ctx, EVP_aes_128_gcm(), NULL, NULL, NULL, -1);
        EVP_CIPHER_CTX_ctrl(k->ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL);
        EVP_CipherInit_ex(k->ctx, NULL, NULL, k->key, NULL, -1);
    } else {
        EVP_CipherInit_ex(k->ctx, EVP_aes_128_ctr(), NULL, k->key, NULL, 1);
    }
}

/* the 12-byte GCM IV (RFC 7714 8.1) or the 16-byte AES-CM IV (RFC 3711 4.1.1) */
static void make_iv(const keys_t *k, uint32_t ssrc, uint32_t roc, uint16_t seq, uint8_t *iv) {
    if (k->gcm) {
        uint8_t b[12] = {0, 0, ssrc >> 24, ssrc >> 16, ssrc >> 8, ssrc, roc >> 24, roc >> 16, roc >> 8, roc,
                         seq >> 8, seq};
        for (int i = 0; i < 12; i++) iv[i] = b[i] ^ k->salt[i];
    } else {
        uint8_t b[16] = {0};
        /* salt * 2^16 XOR SSRC * 2^64 XOR index * 2^16 */
        for (int i = 0; i < 14; i++) b[i] = k->salt[i];
        b[4] ^= ssrc >> 24; b[5] ^= ssrc >> 16; b[6] ^= ssrc >> 8; b[7] ^= ssrc;
        b[8] ^= roc >> 24; b[9] ^= roc >> 16; b[10] ^= roc >> 8; b[11] ^= roc;
        b[12] ^= seq >> 8; b[13] ^= seq;
        memcpy(iv, b, 16);
    }
}

/* protect in place: pkt = 12-byte header + payload of len-12; returns the new length */
static int srtp_protect(keys_t *k, uint8_t *pkt, int len, uint32_t ssrc, uint32_t roc, uint16_t seq) {
    uint8_t iv[16];
    int outl = 0;
    make_iv(k, ssrc, roc, seq, iv);
    if (k->gcm) {
        EVP_CipherInit_ex(k->ctx, NULL, NULL, NULL, iv, 1);
        EVP_CipherUpdate(k->ctx, NULL, &outl, pkt, 12);
        EVP_CipherUpdate(k->ctx, pkt + 12, &outl, pkt + 12, len - 12);
        EVP_CipherFinal_ex(k->ctx, pkt + len, &outl);
        EVP_CIPHER_CTX_ctrl(k->ctx, EVP_CTRL_GCM_GET_TAG, 16, pkt + len);
        return len + 16;
    }
    EVP_CipherInit_ex(k->ctx, NULL, NULL, NULL, iv, 1);
    EVP_CipherUpdate(k->ctx, pkt + 12, &outl, pkt + 12, len - 12);
    uint8_t r[4] = {roc >> 24, roc >> 16, roc >> 8, roc}, md[20];
    unsigned mdl = 0;
    memcpy(pkt + len, r, 4);
    HMAC(EVP_sha1(), k->auth, 20, pkt, len + 4, md, &mdl);
    memcpy(pkt + len, md, 10);
    return len + 10;
}

/* unprotect in place; returns the RTP length or -1 on an authentication failure */
static int srtp_unprotect(keys_t *k, uint8_t *pkt, int len, uint32_t ssrc, uint32_t roc, uint16_t seq) {
    uint8_t iv[16];
    int outl = 0;
    make_iv(k, ssrc, roc, seq, iv);
    if (k->gcm) {
        if (len < 12 + 16) return -1;
        int clen = len - 16;
        EVP_CipherInit_ex(k->ctx, NULL, NULL, NULL, iv, 0);
        EVP_CIPHER_CTX_ctrl(k->ctx, EVP_CTRL_GCM_SET_TAG, 16, pkt + clen);
        EVP_CipherUpdate(k->ctx, NULL, &outl, pkt, 12);
        EVP_CipherUpdate(k->ctx, pkt + 12, &outl, pkt + 12, clen - 12);
        if (EVP_CipherFinal_ex(k->ctx, pkt + clen, &outl) <= 0) return -1;
        return clen;
    }
    if (len < 12 + 10) return -1;
    int clen = len - 10;
    uint8_t tag[10], md[20];
    unsigned mdl = 0;
    memcpy(tag, pkt + clen, 10);
    uint8_t r[4] = {roc >> 24, roc >> 16, roc >> 8, roc};
    memcpy(pkt + clen, r, 4);
    HMAC(EVP_sha1(), k->auth, 20, pkt, clen + 4, md, &mdl);
    if (memcmp(md, tag, 10) != 0) return -1;
    EVP_CipherInit_ex(k->ctx, NULL, NULL, NULL, iv, 1);
    EVP_CipherUpdate(k->ctx, pkt + 12, &outl, pkt + 12, clen - 12);
    return clen;
}

#define MAXPIDS 64
static int relay_pids[MAXPIDS], nrelay_pids;

static long long proc_ticks1(int pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return -1;
    return (long long)(ut + st);
}

/* on-CPU ns summed over all threads (schedstat field 1); field 2 (runnable, waiting for a CPU)
   summed into runq_wait_ns */
static long long runq_wait_ns = 0;

static long long proc_sched_ns1(int pid) {
    char path[320], buf[256];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    long long total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/schedstat", pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(buf, sizeof buf, f)) {
            long long on = 0, wait = 0;
            if (sscanf(buf, "%lld %lld", &on, &wait) == 2) runq_wait_ns += wait;
            total += on;
        }
        fclose(f);
    }
    closedir(d);
    return total;
}

/* summed over relay_pids; a process that is gone counts 0 */
static long long proc_ticks(void) {
    long long total = 0;
    for (int i = 0; i < nrelay_pids; i++) {
        long long v = proc_ticks1(relay_pids[i]);
        if (v > 0) total += v;
    }
    return total;
}

static long long proc_sched_ns(void) {
    long long total = 0;
    for (int i = 0; i < nrelay_pids; i++) {
        long long v = proc_sched_ns1(relay_pids[i]);
        if (v > 0) total += v;
    }
    return total;
}

static long long cpu_softirq_ticks = 0;

static long long cpu_busy_ticks(int cpu) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    char line[512], name[16];
    if (cpu < 0) snprintf(name, sizeof name, "cpu  ");
    else snprintf(name, sizeof name, "cpu%d ", cpu);
    long long res = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, name, strlen(name)) == 0) {
            unsigned long long u, n, s, idle, io, irq, sirq, steal;
            if (sscanf(line + strlen(name), "%llu %llu %llu %llu %llu %llu %llu %llu", &u, &n, &s, &idle, &io, &irq,
                       &sirq, &steal) == 8)
            {
                res = (long long)(u + n + s + irq + sirq + steal);
                cpu_softirq_ticks = (long long)(irq + sirq);
            }
            break;
        }
    }
    fclose(f);
    return res;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(int64_t *v, long long n, double q) {
    if (n <= 0) return -1;
    long long i = (long long)(q * (n - 1) + 0.5);
    return v[i] / 1000.0; /* us */
}

typedef struct {
    int64_t *lat, *read_lat; /* to the arrival (kernel timestamp), to the read */
    long long n, cap, recvd, auth_fail, unknown, other, late_dup, unstamped;
} dir_t;

static dir_t dirs[2]; /* 0: browser -> phone (b2p), 1: phone -> browser (p2b) */

static long long index_base = 0;

static void record(int d, flow_t *fl, const uint8_t *payload, int64_t t, int64_t tread) {
    int64_t sent;
    long long idx;
    memcpy(&sent, payload, 8);
    memcpy(&idx, payload + 12, 8);
    dir_t *D = &dirs[d];
    if (idx < index_base) { /* sent by an earlier run on the same calls: late, not ours */
        D->late_dup++;
        return;
    }
    int64_t lat = t - sent;
    D->recvd++;
    fl->got[d]++;
    if (D->n < D->cap) {
        D->read_lat[D->n] = tread - sent;
        D->lat[D->n++] = lat;
    }
    if (fl->have_transit[d]) {
        double dd = (double)(lat - fl->last_transit[d]);
        if (dd < 0) dd = -dd;
        fl->jit[d] += (dd - fl->jit[d]) / 16.0;
    }
    fl->last_transit[d] = lat;
    fl->have_transit[d] = 1;
}

int main(int argc, char **argv) {
    double rate = 0, dur = 0;
    int bfd = -1, pfd = -1, relay_pid = 0, relay_cpu = 1, drain_ms = 500, dir_b2p = 1, dir_p2b = 1;
    const char *flowfile = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "F:B:H:r:t:p:c:w:o:d:")) != -1) {
        switch (opt) {
        case 'F': flowfile = optarg; break;
        case 'B': bfd = atoi(optarg); break;
        case 'H': pfd = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 't': dur = atof(optarg); break;
        case 'p': {
            char *save = NULL, *tok = strtok_r(optarg, ",", &save);
            for (; tok && nrelay_pids < MAXPIDS; tok = strtok_r(NULL, ",", &save)) relay_pids[nrelay_pids++] = atoi(tok);
            relay_pid = nrelay_pids ? relay_pids[0] : 0;
            break;
        }
        case 'c': relay_cpu = atoi(optarg); break;
        case 'w': drain_ms = atoi(optarg); break;
        case 'o': index_base = atoll(optarg); break;
        case 'd':
            dir_b2p = strcmp(optarg, "p2b") != 0;
            dir_p2b = strcmp(optarg, "b2p") != 0;
            break;
        default: fprintf(stderr, "bad args\n"); return 2;
        }
    }
    if (!flowfile || bfd < 0 || pfd < 0 || rate <= 0 || rate > 1e6 || dur <= 0 || dur > 120) {
        fprintf(stderr, "need -F -B -H -r (<=1e6) -t (<=120)\n");
        return 2;
    }
    FILE *ff = fopen(flowfile, "r");
    if (!ff) die("flow file");
    memset(port_flow_b, -1, sizeof port_flow_b);
    memset(port_flow_p, -1, sizeof port_flow_p);
    memset(addr_flow_b, -1, sizeof addr_flow_b);
    char tp[8], tk[64], ts[64], ta[64], rp[8], rk[64], rs[64], ra[64], src[64], line[1024];
    unsigned sb, sp;
    int bp, pp;
    while (nflows < MAXFLOWS && fgets(line, sizeof line, ff)) {
        int got = sscanf(line, "%d %d %u %u %7s %63s %63s %63s %7s %63s %63s %63s %63s", &bp, &pp, &sb, &sp, tp, tk,
                         ts, ta, rp, rk, rs, ra, src);
        if (got < 12) continue;
        if (got == 13 && strcmp(src, "-") != 0) {
            if (inet_pton(AF_INET, src, &flow_src[nflows]) != 1 || (ntohl(flow_src[nflows].s_addr) >> 24) != 127) {
                fprintf(stderr, "bad SRC %s (127.0.0.0/8 only)\n", src);
                return 2;
            }
            int key = ntohl(flow_src[nflows].s_addr) & 0xffff;
            if (addr_flow_b[key] >= 0) {
                fprintf(stderr, "SRC %s: its low 16 bits are another flow's\n", src);
                return 2;
            }
            addr_flow_b[key] = (int16_t)nflows;
            spread = 1;
        }
        flow_t *fl = &flows[nflows];
        fl->bport = bp;
        fl->pport = pp;
        fl->ssrc_b = sb;
        fl->ssrc_p = sp;
        keys_init(&fl->tx, tp, tk, ts, ta);
        keys_init(&fl->rx, rp, rk, rs, ra);
        port_flow_b[bp] = (int16_t)nflows;
        port_flow_p[pp] = (int16_t)nflows;
        nflows++;
    }
    fclose(ff);
    if (nflows < 1) { fprintf(stderr, "no flows\n"); return 2; }
    int big = 4 << 20;
    setsockopt(bfd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    setsockopt(pfd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    setsockopt(bfd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
    setsockopt(pfd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
    fcntl(bfd, F_SETFL, O_NONBLOCK);
    fcntl(pfd, F_SETFL, O_NONBLOCK);

    struct sockaddr_in *dst_b = calloc(nflows, sizeof *dst_b), *dst_p = calloc(nflows, sizeof *dst_p);
    for (int i = 0; i < nflows; i++) {
        dst_b[i].sin_family = dst_p[i].sin_family = AF_INET;
        dst_b[i].sin_addr.s_addr = dst_p[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        dst_b[i].sin_port = htons(flows[i].bport);
        dst_p[i].sin_port = htons(flows[i].pport);
    }
    long long total = (long long)(rate * dur);
    for (int d = 0; d < 2; d++) {
        dirs[d].cap = total + 16;
        dirs[d].lat = malloc(dirs[d].cap * sizeof(int64_t));
        dirs[d].read_lat = malloc(dirs[d].cap * sizeof(int64_t));
        if (!dirs[d].lat || !dirs[d].read_lat) die("malloc");
    }

    static uint8_t sb_buf[BATCH][MAXPKT], sp_buf[BATCH][MAXPKT], rbuf[BATCH][MAXPKT];
    static struct mmsghdr smsg_b[BATCH], smsg_p[BATCH], rmsg[BATCH];
    static struct iovec siov_b[BATCH], siov_p[BATCH], riov[BATCH];
    static struct sockaddr_in rsrc[BATCH];
    static char rctl[BATCH][CMSG_SPACE(sizeof(struct timespec)) + CMSG_SPACE(sizeof(struct in_pktinfo))];
    static char sctl[BATCH][CMSG_SPACE(sizeof(struct in_pktinfo))];
    int on = 1;
    if (setsockopt(bfd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) || setsockopt(pfd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on))
        die("SO_TIMESTAMPNS");
    if (spread && setsockopt(bfd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on)) die("IP_PKTINFO");
    for (int i = 0; i < BATCH; i++) {
        riov[i].iov_base = rbuf[i];
        riov[i].iov_len = MAXPKT;
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
        rmsg[i].msg_hdr.msg_name = &rsrc[i];
        rmsg[i].msg_hdr.msg_namelen = sizeof rsrc[i];
        siov_b[i].iov_base = sb_buf[i];
        siov_p[i].iov_base = sp_buf[i];
        smsg_b[i].msg_hdr.msg_iov = &siov_b[i];
        smsg_p[i].msg_hdr.msg_iov = &siov_p[i];
        smsg_b[i].msg_hdr.msg_iovlen = smsg_p[i].msg_hdr.msg_iovlen = 1;
        smsg_b[i].msg_hdr.msg_namelen = smsg_p[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
    }

    long long sent = 0, sent_b = 0, sent_p = 0, sendfail = 0;
    long long tk0 = relay_pid ? proc_ticks() : 0, ns0 = relay_pid ? proc_sched_ns() : 0;
    long long rq0 = runq_wait_ns;
    long long cb0 = cpu_busy_ticks(relay_cpu), sirq0 = cpu_softirq_ticks;
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    int64_t t0 = now_ns(), tlast_send = t0;
    double quantum = 50e-6;
    int fds[2] = {bfd, pfd};

    for (;;) {
        int64_t t = now_ns();
        if (sent < total) {
            long long due = (long long)((t - t0) * 1e-9 * rate) + 1;
            if (due > total) due = total;
            while (sent < due) {
                int nb = 0;
                while (nb < BATCH && sent < due) {
                    long long j = sent;
                    int f = (int)(j % nflows);
                    long long idx = index_base + j / nflows;
                    flow_t *fl = &flows[f];
                    uint16_t seq = (uint16_t)idx;
                    uint32_t roc = (uint32_t)(idx >> 16), rts = (uint32_t)(idx * 160);
                    int64_t stamp = wall_ns();
                    uint8_t *bufs[2] = {sb_buf[nb], sp_buf[nb]};
                    uint32_t ssrcs[2] = {fl->ssrc_b, fl->ssrc_p};
                    for (int k = 0; k < 2; k++) {
                        uint8_t *b = bufs[k];
                        b[0] = 0x80; b[1] = 0;
                        b[2] = seq >> 8; b[3] = seq;
                        b[4] = rts >> 24; b[5] = rts >> 16; b[6] = rts >> 8; b[7] = rts;
                        b[8] = ssrcs[k] >> 24; b[9] = ssrcs[k] >> 16; b[10] = ssrcs[k] >> 8; b[11] = ssrcs[k];
                        memset(b + 12, 0xD5, PAYLOAD);
                        memcpy(b + 12, &stamp, 8);
                        memcpy(b + 20, &f, 4);
                        memcpy(b + 24, &idx, 8);
                    }
                    siov_b[nb].iov_len = srtp_protect(&fl->tx, sb_buf[nb], 12 + PAYLOAD, fl->ssrc_b, roc, seq);
                    siov_p[nb].iov_len = 12 + PAYLOAD;
                    smsg_b[nb].msg_hdr.msg_name = &dst_b[f];
                    if (spread) { /* this call's browser address as the source (IP_PKTINFO's ipi_spec_dst) */
                        struct msghdr *h = &smsg_b[nb].msg_hdr;
                        h->msg_control = sctl[nb];
                        h->msg_controllen = sizeof sctl[nb];
                        struct cmsghdr *cm = CMSG_FIRSTHDR(h);
                        cm->cmsg_level = IPPROTO_IP;
                        cm->cmsg_type = IP_PKTINFO;
                        cm->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
                        struct in_pktinfo pi = {.ipi_ifindex = 0, .ipi_spec_dst = flow_src[f]};
                        memcpy(CMSG_DATA(cm), &pi, sizeof pi);
                    }
                    smsg_p[nb].msg_hdr.msg_name = &dst_p[f];
                    nb++;
                    sent++;
                }
                struct mmsghdr *ms[2] = {smsg_b, smsg_p};
                int on[2] = {dir_b2p, dir_p2b};
                for (int k = 0; k < 2; k++) {
                    if (!on[k]) continue;
                    int done = 0;
                    while (done < nb) {
                        int r = sendmmsg(fds[k], ms[k] + done, nb - done, 0);
                        if (r < 0) {
                            if (errno == EINTR) continue;
                            sendfail += nb - done;
                            break;
                        }
                        done += r;
                    }
                    if (k == 0) sent_b += done; else sent_p += done;
                }
            }
            tlast_send = now_ns();
        }
        /* drain both receivers */
        for (int k = 0; k < 2; k++) {
            for (;;) {
                for (int i = 0; i < BATCH; i++) {
                    rmsg[i].msg_hdr.msg_namelen = sizeof rsrc[i];
                    rmsg[i].msg_hdr.msg_control = rctl[i];
                    rmsg[i].msg_hdr.msg_controllen = sizeof rctl[i];
                }
                int r = recvmmsg(fds[k], rmsg, BATCH, MSG_DONTWAIT, NULL);
                if (r <= 0) break;
                int64_t tread = wall_ns();
                for (int i = 0; i < r; i++) {
                    int64_t tr = 0; /* the arrival, if the kernel stamped it (it does: SO_TIMESTAMPNS) */
                    int to_addr = -1; /* the low 16 bits of the address it came to (IP_PKTINFO) */
                    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&rmsg[i].msg_hdr); cm; cm = CMSG_NXTHDR(&rmsg[i].msg_hdr, cm)) {
                        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                            struct timespec kts;
                            memcpy(&kts, CMSG_DATA(cm), sizeof kts);
                            tr = (int64_t)kts.tv_sec * 1000000000LL + kts.tv_nsec;
                        } else if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
                            struct in_pktinfo pi;
                            memcpy(&pi, CMSG_DATA(cm), sizeof pi);
                            to_addr = (int)(ntohl(pi.ipi_addr.s_addr) & 0xffff);
                        }
                    }
                    if (!tr) {
                        tr = tread;
                        dirs[k == 0 ? 1 : 0].unstamped++;
                    }
                    uint8_t *p = rbuf[i];
                    int len = (int)rmsg[i].msg_len, port = ntohs(rsrc[i].sin_port);
                    /* RTP only (RFC 7983: 128-191), not RTCP */
                    if (len < 12 || p[0] < 128 || p[0] > 191 || (p[1] >= 192 && p[1] <= 223)) {
                        dirs[k == 0 ? 1 : 0].other++;
                        continue;
                    }
                    if (k == 0) { /* SRTP from the relay's browser-facing port */
                        int f = spread ? (to_addr >= 0 ? addr_flow_b[to_addr] : -1) : port_flow_b[port];
                        if (f < 0) { dirs[1].unknown++; continue; }
                        flow_t *fl = &flows[f];
                        uint16_t seq = (uint16_t)(p[2] << 8 | p[3]);
                        uint32_t ssrc = (uint32_t)p[8] << 24 | p[9] << 16 | p[10] << 8 | p[11];
                        uint32_t v = fl->rx_roc;
                        if (fl->rx_started) {
                            if (fl->rx_seq < 32768) {
                                if (seq - fl->rx_seq > 32768) v = fl->rx_roc - 1;
                            } else if (fl->rx_seq - 32768 > seq) {
                                v = fl->rx_roc + 1;
                            }
                        }
                        int n;
                        if (fl->rx_started) {
                            n = srtp_unprotect(&fl->rx, p, len, ssrc, v, seq);
                        } else { /* a later step on the same call: the relay's ROC may be past 0 */
                            static uint8_t copy[MAXPKT];
                            memcpy(copy, p, len);
                            n = -1;
                            for (v = 0; v < 4 && n < 0; v++) {
                                memcpy(p, copy, len);
                                n = srtp_unprotect(&fl->rx, p, len, ssrc, v, seq);
                            }
                            v--;
                        }
                        if (n < 12 + 32) { dirs[1].auth_fail++; continue; }
                        if (!fl->rx_started || v > fl->rx_roc || (v == fl->rx_roc && seq > fl->rx_seq)) {
                            fl->rx_roc = v;
                            fl->rx_seq = seq;
                            fl->rx_started = 1;
                        }
                        record(1, fl, p + 12, tr, tread);
                    } else { /* plain RTP from the relay's SIP-facing port */
                        int f = port_flow_p[port];
                        if (f < 0 || len < 12 + 32) { dirs[0].unknown++; continue; }
                        record(0, &flows[f], p + 12, tr, tread);
                    }
                }
                if (r < BATCH) break;
            }
        }
        t = now_ns();
        if (sent >= total) {
            long long want = (dir_b2p ? sent_b : 0) + (dir_p2b ? sent_p : 0);
            long long have = dirs[0].recvd + dirs[1].recvd;
            if (t >= tlast_send + drain_ms * 1000000LL) break;
            if (have >= want && t >= tlast_send + 50000000LL) break;
        }
        double next_due = sent < total ? (t0 * 1e-9 + (sent + 0.0) / rate) : t * 1e-9 + 0.005;
        double wait = next_due - t * 1e-9;
        if (sent < total && wait < quantum) wait = quantum;
        if (wait > 0.005) wait = 0.005;
        if (wait > 0) {
            struct pollfd pfds[2] = {{.fd = bfd, .events = POLLIN}, {.fd = pfd, .events = POLLIN}};
            struct timespec tsw = {.tv_sec = 0, .tv_nsec = (long)(wait * 1e9)};
            ppoll(pfds, 2, &tsw, NULL);
        }
    }
    int64_t t1 = now_ns();
    getrusage(RUSAGE_SELF, &ru1);
    runq_wait_ns = 0;
    long long tk1 = relay_pid ? proc_ticks() : 0, ns1 = relay_pid ? proc_sched_ns() : 0;
    long long rq1 = runq_wait_ns;
    long long cb1 = cpu_busy_ticks(relay_cpu), sirq1 = cpu_softirq_ticks;
    double wall = (t1 - t0) * 1e-9, send_span = (tlast_send - t0) * 1e-9;
    double own_cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                     1e-6 * ((ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec));
    double relay_cpu_s = relay_pid ? (ns1 - ns0) * 1e-9 : 0;
    double relay_ticks_s = relay_pid ? (tk1 - tk0) / (double)sysconf(_SC_CLK_TCK) : 0;
    long long delivered = dirs[0].recvd + dirs[1].recvd;
    printf("{\"flows\": %d, \"rate_per_direction\": %.0f, \"duration\": %.3f, \"wall\": %.3f, \"sendfail\": %lld, "
           "\"relay_cpu_s\": %.4f, \"relay_cpu_ticks_s\": %.3f, \"relay_cpu_pct\": %.1f, \"relay_us_per_pkt\": %.3f, "
           "\"relay_us_per_pkt_ticks\": %.3f, "
           "\"harness_cpu_pct\": %.1f, \"foreign_pct\": %.1f, \"relay_cpu_irq_pct\": %.1f, \"relay_runqueue_wait_pct\": %.1f, \"directions\": {",
           nflows, rate, dur, wall, sendfail, relay_cpu_s, relay_ticks_s, relay_pid ? 100.0 * relay_cpu_s / wall : 0,
           delivered ? relay_cpu_s * 1e6 / delivered : 0, delivered ? relay_ticks_s * 1e6 / delivered : 0,
           100.0 * own_cpu / wall,
           100.0 * ((cb1 - cb0) / (double)sysconf(_SC_CLK_TCK) - relay_cpu_s) / wall,
           100.0 * (sirq1 - sirq0) / (double)sysconf(_SC_CLK_TCK) / wall, 100.0 * (rq1 - rq0) * 1e-9 / wall);
    const char *names[2] = {"browser_to_phone", "phone_to_browser"};
    long long sents[2] = {dir_b2p ? sent_b : 0, dir_p2b ? sent_p : 0};
    for (int d = 0; d < 2; d++) {
        dir_t *D = &dirs[d];
        qsort(D->lat, D->n, sizeof(int64_t), cmp_i64);
        qsort(D->read_lat, D->n, sizeof(int64_t), cmp_i64);
        double jsum = 0, jmax = 0;
        int jn = 0;
        for (int i = 0; i < nflows; i++) {
            if (!flows[i].have_transit[d]) continue;
            jsum += flows[i].jit[d];
            if (flows[i].jit[d] > jmax) jmax = flows[i].jit[d];
            jn++;
        }
        long long lost = sents[d] - D->recvd;
        printf("%s\"%s\": {\"sent\": %lld, \"received\": %lld, \"loss_pct\": %.4f, \"sent_pps\": %.0f, "
               "\"received_pps\": %.0f, \"latency_us\": {\"p50\": %.1f, \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f}, "
               "\"read_latency_us\": {\"p50\": %.1f, \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f}, \"unstamped\": %lld, "
               "\"jitter_us\": {\"mean\": %.1f, \"max\": %.1f}, \"auth_failures\": %lld, \"unknown_source\": %lld, "
               "\"other_packets\": %lld, \"late_from_earlier_run\": %lld}",
               d ? ", " : "", names[d], sents[d], D->recvd, sents[d] ? 100.0 * lost / sents[d] : 0.0,
               send_span > 0 ? sents[d] / send_span : 0, send_span > 0 ? D->recvd / send_span : 0,
               pct(D->lat, D->n, 0.5), pct(D->lat, D->n, 0.99), pct(D->lat, D->n, 0.999),
               D->n ? D->lat[D->n - 1] / 1000.0 : -1, pct(D->read_lat, D->n, 0.5), pct(D->read_lat, D->n, 0.99),
               pct(D->read_lat, D->n, 0.999), D->n ? D->read_lat[D->n - 1] / 1000.0 : -1, D->unstamped, jn ? jsum / jn / 1000.0 : -1, jmax / 1000.0, D->auth_fail,
               D->unknown, D->other, D->late_dup);
    }
    printf("}}\n");
    return 0;
}
