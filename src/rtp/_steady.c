/* rtp._steady: the steady media stream of a call, relayed in C (issue 6).

   A `SteadyRelay` serves the two connected twins of one call (rtp.media): the browser's, connected to its
   nominated address, and the SIP leg's, connected to the latched RTP source. For each datagram it does what
   `rtp.media` + `rtp.relay` do in Python for the common case, with the same state and the same results:

     browser -> SIP: SRTP unprotect (libsrtp, the call's own context), RFC 3550 A.1/A.3/A.8 reception
                     statistics, payload type mapping and G.711 transcoding, send on the SIP twin;
     SIP -> browser: the same statistics, SSRC/sequence/timestamp rewriting of a continuing stream,
                     payload type mapping, SRTP protect, send on the browser twin.

   Anything else (RTCP, STUN, DTLS, a header with CSRCs, extension or padding, a new or changed SIP source,
   a jump, a first packet, a packet while not armed) is "punted": the datagram is left in the shared buffer
   and the Python handler given at construction runs on it, after which Python re-arms the object with its
   state (`arm`). While armed, the state lives here; `collect` hands it back (counters as increments) and
   disarms. The
   Python relay stays the definition of the behaviour: tests run both on the same packets and compare.

   libsrtp is pylibsrtp's own copy, called through the function pointers and contexts Python passes in
   (rtp.srtp.SrtpTx.native / SrtpRx.native): one context per direction, whoever calls it.

   The module's other type, `Dispatcher` (_dispatch.c), runs the media plane's passes in C and calls the
   two handlers of a SteadyRelay directly (steady_kind / steady_datagram, _steady.h).

   Without a browser twin (the single-port mode on a kernel with no 4-tuple hash for connected UDP sockets,
   rtp.browser_port): `browser_dest` names the browser's address, SRTP to it goes out of `browser_fd` (the
   worker's shared port) with sendto, and the shared port's demultiplexer hands the browser's datagrams in
   with `browser_in(n, now)` once they are in the buffer (the same relay as `browser`, without the recv).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "_steady.h"

#define MAX_DROPOUT 3000 /* RFC 3550 appendix A.1 */
#define MAX_MISORDER 100
#define MAX_TIMESTAMP_JUMP (8000 * 60)
#define RESTART_GAP 1.0
#define RTP_SEQ_MOD 65536
#define TRAILER_ROOM 148 /* the most SRTP may add (rtp.srtp) */

typedef int (*srtp_fn)(void *ctx, void *hdr, int *len);

typedef struct {
    int valid;
    uint32_t ssrc;
    int64_t base_seq, max_seq, bad_seq, cycles, received, prior_expected, prior_received;
    int has_transit;
    double transit, jitter, max_jitter;
} source_t;

typedef struct {
    int64_t packets, octets, unknown_pt, srtp_auth, srtp_replay, malformed;
    int has_last;
    double last_packet_time;
} leg_t;

typedef struct { /* 128 + 128 + 32 bytes: a call keeps two */
    int8_t out_pt[128];        /* -1: not negotiated */
    uint8_t table_index[128];  /* 0: no transcoding, else tables[i] */
    const uint8_t *tables[4];
} routes_t;

typedef struct {
    PyObject_HEAD
    int browser_fd, sip_fd;
    /* with no browser twin: where SRTP to the browser goes, sent from browser_fd (the shared port) */
    struct sockaddr_storage browser_dest;
    socklen_t browser_dest_len; /* 0: browser_fd is a connected twin (send) */
    PyObject *buffer;   /* the plane's bytearray */
    PyObject *browser_punt, *sip_punt;
    int armed;
    /* SRTP: the contexts, and their Python owners, kept alive while they may be used */
    srtp_fn unprotect, protect;
    void *rx, *tx;
    PyObject *srtp_owners;
    /* payload types; the tuples are kept for the transcoding tables' lifetime */
    PyObject *to_sip_obj, *to_browser_obj;
    routes_t to_sip_routes, to_browser_routes;
    /* SIP -> browser rewriting (rtp.relay.Relay) */
    uint32_t our_ssrc;
    double clock_rate;
    int started;
    uint32_t in_ssrc;
    uint16_t seq_delta;
    uint32_t ts_delta;
    uint16_t max_in_seq, last_out_seq;
    uint32_t last_in_ts, last_out_ts;
    int has_last_out_time;
    double last_out_time;
    /* reception statistics' current source, per direction (named for where the packets go) */
    source_t rec_to_sip, rec_to_browser;
    /* counters since the last collect */
    leg_t to_sip, to_browser;
    int64_t demux_rtp, send_failed, punts;
    int has_browser_media;
    double last_browser_media;
} SteadyRelay;

static PyTypeObject SteadyRelayType;

/* -- RFC 3550 A.1 / A.3 / A.8, as rtp.reception.SourceStats ------------------------------------------- */

static void add_transit_difference(source_t *s, double d) {
    if (d < 0)
        d = -d;
    if (d > 2147483648.0) /* the RTP timestamp is modulo 2**32: the short way */
        d = fabs(fmod(d + 2147483648.0, 4294967296.0) - 2147483648.0);
    double jitter = s->jitter + (d - s->jitter) * 0.0625;
    s->jitter = jitter;
    if (jitter > s->max_jitter)
        s->max_jitter = jitter;
}

static void update_transit(source_t *s, uint32_t timestamp, double arrival) {
    double transit = arrival - (double)timestamp;
    int had = s->has_transit;
    double previous = s->transit;
    s->transit = transit;
    s->has_transit = 1;
    if (had)
        add_transit_difference(s, transit - previous);
}

static void source_update(source_t *s, int64_t seq, uint32_t timestamp, double arrival) {
    int64_t udelta = (seq - s->max_seq) & 0xFFFF;
    if (udelta < MAX_DROPOUT) {
        if (seq < s->max_seq)
            s->cycles += RTP_SEQ_MOD;
        s->max_seq = seq;
    } else if (udelta <= RTP_SEQ_MOD - MAX_MISORDER) {
        if (seq != s->bad_seq) {
            s->bad_seq = (seq + 1) & 0xFFFF;
            return;
        }
        s->prior_expected += s->cycles + s->max_seq - s->base_seq + 1;
        s->prior_received += s->received;
        s->base_seq = s->max_seq = seq;
        s->bad_seq = RTP_SEQ_MOD + 1;
        s->cycles = 0;
        s->received = 1;
        s->has_transit = 0;
        update_transit(s, timestamp, arrival);
        return;
    }
    s->received += 1;
    update_transit(s, timestamp, arrival);
}

/* -- helpers ------------------------------------------------------------------------------------------- */

static void count_srtp_failure(leg_t *leg, int status) {
    if (status == 7)
        leg->srtp_auth++;
    else if (status == 9 || status == 10)
        leg->srtp_replay++;
    else
        leg->malformed++;
}

static void leg_forwarded(leg_t *leg, int64_t octets, double now) {
    leg->packets++;
    leg->octets += octets;
    leg->has_last = 1;
    leg->last_packet_time = now;
}

/* 1, or -1 with the Python handler's exception set */
static int punt(SteadyRelay *self, PyObject *handler, Py_ssize_t n, double now) {
    self->punts++;
    PyObject *res = PyObject_CallFunction(handler, "nd", n, now);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 1;
}

/* Receive one datagram into the shared buffer: its length, or -1 if there was none. */
static Py_ssize_t receive(SteadyRelay *self, int fd, uint8_t **data, Py_ssize_t *size) {
    *data = (uint8_t *)PyByteArray_AS_STRING(self->buffer);
    *size = PyByteArray_GET_SIZE(self->buffer);
    ssize_t n;
    do {
        n = recv(fd, *data, (size_t)*size, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -1 : (Py_ssize_t)n;
}

static void transcode(uint8_t *p, Py_ssize_t start, Py_ssize_t end, const uint8_t *table) {
    for (Py_ssize_t i = start; i < end; i++)
        p[i] = table[p[i]];
}

/* -- the two handlers (rtp.plane calls them with `now`) ------------------------------------------------- */

/* The browser's datagram of n bytes at d (the shared buffer): 1 (relayed, dropped or punted), -1: a punt
   handler raised */
static int browser_relay(SteadyRelay *self, uint8_t *d, Py_ssize_t n, double now) {
    /* RTP with a bare header (RFC 7983 §7, RFC 5761 §4); the rest is Python's */
    if (!self->armed || n < 12 || d[0] != 0x80 || ((d[1] & 0x7F) >= 64 && (d[1] & 0x7F) <= 95))
        return punt(self, self->browser_punt, n, now);
    uint32_t ssrc = (uint32_t)d[8] << 24 | (uint32_t)d[9] << 16 | (uint32_t)d[10] << 8 | d[11];
    source_t *rec = &self->rec_to_sip;
    if (!rec->valid || ssrc != rec->ssrc)
        return punt(self, self->browser_punt, n, now);
    leg_t *leg = &self->to_sip;
    self->demux_rtp++;
    self->has_browser_media = 1;
    self->last_browser_media = now;
    int len = (int)n;
    int status = self->unprotect(self->rx, d, &len); /* RFC 3711 §3.3: authenticate, then decrypt */
    if (status) {
        count_srtp_failure(leg, status);
        return 1;
    }
    uint8_t b1 = d[1];
    int64_t seq = (int64_t)d[2] << 8 | d[3];
    uint32_t ts = (uint32_t)d[4] << 24 | (uint32_t)d[5] << 16 | (uint32_t)d[6] << 8 | d[7];
    source_update(rec, seq, ts, now * self->clock_rate);
    int pt = b1 & 0x7F;
    int out_pt = self->to_sip_routes.out_pt[pt];
    if (out_pt < 0) {
        leg->unknown_pt++;
        return 1;
    }
    if (out_pt != pt)
        d[1] = (uint8_t)((b1 & 0x80) | out_pt);
    if (self->to_sip_routes.table_index[pt])
        transcode(d, 12, len, self->to_sip_routes.tables[self->to_sip_routes.table_index[pt]]);
    leg_forwarded(leg, len, now);
    if (send(self->sip_fd, d, (size_t)len, MSG_DONTWAIT) < 0)
        self->send_failed++;
    return 1;
}

/* 1: a datagram was read (relayed, dropped or punted), 0: none, -1: a punt handler raised */
static int browser_datagram(SteadyRelay *self, double now) {
    uint8_t *d;
    Py_ssize_t size;
    Py_ssize_t n = receive(self, self->browser_fd, &d, &size);
    if (n < 0)
        return 0;
    return browser_relay(self, d, n, now);
}

/* 1: a datagram was read (relayed, dropped or punted), 0: none, -1: a punt handler raised */
static int sip_datagram(SteadyRelay *self, double now) {
    uint8_t *d;
    Py_ssize_t size;
    Py_ssize_t n = receive(self, self->sip_fd, &d, &size);
    if (n < 0)
        return 0;
    if (!self->armed || n < 12 || n > size - TRAILER_ROOM || d[0] != 0x80 || (d[1] >= 192 && d[1] <= 223))
        return punt(self, self->sip_punt, n, now);
    uint8_t b1 = d[1];
    uint16_t seq = (uint16_t)(d[2] << 8 | d[3]);
    uint32_t ts = (uint32_t)d[4] << 24 | (uint32_t)d[5] << 16 | (uint32_t)d[6] << 8 | d[7];
    uint32_t ssrc = (uint32_t)d[8] << 24 | (uint32_t)d[9] << 16 | (uint32_t)d[10] << 8 | d[11];
    /* the continuing stream only (rtp.relay.Relay.sip_rtp_in): a new source or a jump is Python's */
    if (!self->started || ssrc != self->in_ssrc)
        return punt(self, self->sip_punt, n, now);
    int dseq = (int)((uint16_t)(seq - self->max_in_seq + 0x8000)) - 0x8000;
    if (dseq < -MAX_MISORDER || dseq > MAX_DROPOUT)
        return punt(self, self->sip_punt, n, now);
    int forward = dseq > 0;
    if (forward) {
        int64_t dts = (int64_t)(uint32_t)(ts - self->last_in_ts + 0x80000000u) - 0x80000000LL;
        if (dts < 0 || dts > MAX_TIMESTAMP_JUMP)
            return punt(self, self->sip_punt, n, now);
    } else if (self->has_last_out_time && now - self->last_out_time > RESTART_GAP) {
        return punt(self, self->sip_punt, n, now);
    }
    source_t *rec = &self->rec_to_browser;
    if (!rec->valid || ssrc != rec->ssrc)
        return punt(self, self->sip_punt, n, now);
    leg_t *leg = &self->to_browser;
    source_update(rec, seq, ts, now * self->clock_rate);
    int pt = b1 & 0x7F;
    int out_pt = self->to_browser_routes.out_pt[pt];
    if (out_pt < 0) {
        leg->unknown_pt++;
        return 1;
    }
    uint16_t out_seq = (uint16_t)(seq + self->seq_delta);
    uint32_t out_ts = ts + self->ts_delta;
    d[1] = (uint8_t)((b1 & 0x80) | out_pt);
    d[2] = (uint8_t)(out_seq >> 8);
    d[3] = (uint8_t)out_seq;
    d[4] = (uint8_t)(out_ts >> 24);
    d[5] = (uint8_t)(out_ts >> 16);
    d[6] = (uint8_t)(out_ts >> 8);
    d[7] = (uint8_t)out_ts;
    d[8] = (uint8_t)(self->our_ssrc >> 24);
    d[9] = (uint8_t)(self->our_ssrc >> 16);
    d[10] = (uint8_t)(self->our_ssrc >> 8);
    d[11] = (uint8_t)self->our_ssrc;
    if (self->to_browser_routes.table_index[pt])
        transcode(d, 12, n, self->to_browser_routes.tables[self->to_browser_routes.table_index[pt]]);
    int len = (int)n;
    int status = self->protect(self->tx, d, &len);
    if (status) {
        count_srtp_failure(leg, status);
        return 1;
    }
    if (forward) {
        self->max_in_seq = seq;
        self->last_in_ts = ts;
        self->last_out_seq = out_seq;
        self->last_out_ts = out_ts;
        self->has_last_out_time = 1;
        self->last_out_time = now;
    }
    leg_forwarded(leg, len, now);
    ssize_t sent = self->browser_dest_len
                       ? sendto(self->browser_fd, d, (size_t)len, MSG_DONTWAIT,
                                (const struct sockaddr *)&self->browser_dest, self->browser_dest_len)
                       : send(self->browser_fd, d, (size_t)len, MSG_DONTWAIT);
    if (sent < 0)
        self->send_failed++;
    return 1;
}

static PyObject *as_result(int r) {
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *SteadyRelay_browser(SteadyRelay *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return as_result(browser_datagram(self, now));
}

static PyObject *SteadyRelay_browser_in(SteadyRelay *self, PyObject *args) {
    Py_ssize_t n;
    double now;
    if (!PyArg_ParseTuple(args, "nd:browser_in", &n, &now))
        return NULL;
    if (n < 0 || n > PyByteArray_GET_SIZE(self->buffer)) {
        PyErr_SetString(PyExc_ValueError, "n is not a length within the buffer");
        return NULL;
    }
    return as_result(browser_relay(self, (uint8_t *)PyByteArray_AS_STRING(self->buffer), n, now));
}

static PyObject *SteadyRelay_sip(SteadyRelay *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return as_result(sip_datagram(self, now));
}

/* -- for the plane's dispatcher (_dispatch.c): its handlers that are these methods, called directly ------- */

int steady_kind(PyObject *handler) {
    if (!PyCFunction_Check(handler))
        return STEADY_OTHER;
    PyObject *owner = PyCFunction_GET_SELF(handler);
    if (owner == NULL || Py_TYPE(owner) != &SteadyRelayType)
        return STEADY_OTHER;
    PyCFunction f = PyCFunction_GET_FUNCTION(handler);
    if (f == (PyCFunction)SteadyRelay_browser)
        return STEADY_BROWSER;
    if (f == (PyCFunction)SteadyRelay_sip)
        return STEADY_SIP;
    return STEADY_OTHER;
}

int steady_datagram(PyObject *handler, int kind, double now) {
    SteadyRelay *relay = (SteadyRelay *)PyCFunction_GET_SELF(handler);
    return kind == STEADY_BROWSER ? browser_datagram(relay, now) : sip_datagram(relay, now);
}

/* -- arming and collecting ------------------------------------------------------------------------------ */

static int parse_routes(PyObject *seq, routes_t *routes) {
    if (!PyTuple_Check(seq) || PyTuple_GET_SIZE(seq) != 128) {
        PyErr_SetString(PyExc_TypeError, "a route table is a tuple of 128 entries");
        return -1;
    }
    memset(routes, 0, sizeof *routes);
    int ntables = 1;
    for (int pt = 0; pt < 128; pt++) {
        PyObject *entry = PyTuple_GET_ITEM(seq, pt);
        routes->out_pt[pt] = -1;
        if (entry == Py_None)
            continue;
        PyObject *out, *table;
        if (!PyTuple_Check(entry) || !PyArg_ParseTuple(entry, "OO", &out, &table))
            return -1;
        long out_pt = PyLong_AsLong(out);
        if (out_pt == -1 && PyErr_Occurred())
            return -1;
        if (out_pt < 0 || out_pt > 127) {
            PyErr_SetString(PyExc_ValueError, "payload type out of range");
            return -1;
        }
        routes->out_pt[pt] = (int8_t)out_pt;
        if (table != Py_None) {
            if (!PyBytes_Check(table) || PyBytes_GET_SIZE(table) != 256) {
                PyErr_SetString(PyExc_TypeError, "a transcoding table is 256 bytes");
                return -1;
            }
            const uint8_t *bytes = (const uint8_t *)PyBytes_AS_STRING(table);
            int i = 1;
            while (i < ntables && routes->tables[i] != bytes)
                i++;
            if (i == ntables) {
                if (ntables == 4) {
                    PyErr_SetString(PyExc_ValueError, "more than 3 transcoding tables");
                    return -1;
                }
                routes->tables[ntables++] = bytes;
            }
            routes->table_index[pt] = (uint8_t)i;
        }
    }
    return 0;
}

static int parse_source(PyObject *obj, source_t *s) {
    if (obj == Py_None) {
        s->valid = 0;
        return 0;
    }
    unsigned long ssrc;
    long long base_seq, max_seq, bad_seq, cycles, received, prior_expected, prior_received;
    PyObject *transit;
    if (!PyArg_ParseTuple(obj, "kLLLLLLLOdd", &ssrc, &base_seq, &max_seq, &bad_seq, &cycles, &received,
                          &prior_expected, &prior_received, &transit, &s->jitter, &s->max_jitter))
        return -1;
    s->ssrc = (uint32_t)ssrc;
    s->base_seq = base_seq;
    s->max_seq = max_seq;
    s->bad_seq = bad_seq;
    s->cycles = cycles;
    s->received = received;
    s->prior_expected = prior_expected;
    s->prior_received = prior_received;
    s->has_transit = transit != Py_None;
    if (s->has_transit) {
        s->transit = PyFloat_AsDouble(transit);
        if (s->transit == -1.0 && PyErr_Occurred())
            return -1;
    }
    s->valid = 1;
    return 0;
}

static PyObject *source_tuple(const source_t *s) {
    if (!s->valid)
        Py_RETURN_NONE;
    PyObject *transit = s->has_transit ? PyFloat_FromDouble(s->transit) : Py_NewRef(Py_None);
    if (transit == NULL)
        return NULL;
    return Py_BuildValue("(kLLLLLLLNdd)", (unsigned long)s->ssrc, (long long)s->base_seq,
                         (long long)s->max_seq, (long long)s->bad_seq, (long long)s->cycles,
                         (long long)s->received, (long long)s->prior_expected, (long long)s->prior_received,
                         transit, s->jitter, s->max_jitter);
}

static PyObject *optional_time(int has, double t) {
    return has ? PyFloat_FromDouble(t) : Py_NewRef(Py_None);
}

static PyObject *leg_tuple(leg_t *leg) {
    PyObject *last = optional_time(leg->has_last, leg->last_packet_time);
    if (last == NULL)
        return NULL;
    PyObject *res = Py_BuildValue("(LLNLLLL)", (long long)leg->packets, (long long)leg->octets, last,
                                  (long long)leg->unknown_pt, (long long)leg->srtp_auth,
                                  (long long)leg->srtp_replay, (long long)leg->malformed);
    memset(leg, 0, sizeof *leg);
    return res;
}

static PyObject *SteadyRelay_arm(SteadyRelay *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"srtp", "to_sip", "to_browser", "rewrite", "rec_to_sip", "rec_to_browser", NULL};
    PyObject *srtp, *to_sip, *to_browser, *rewrite, *rec_to_sip, *rec_to_browser;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO:arm", kwlist, &srtp, &to_sip, &to_browser, &rewrite,
                                     &rec_to_sip, &rec_to_browser))
        return NULL;
    self->armed = 0; /* a refused arm leaves it punting */
    unsigned long long unprotect, rx, protect, tx;
    PyObject *owners = Py_None;
    if (!PyArg_ParseTuple(srtp, "KKKK|O", &unprotect, &rx, &protect, &tx, &owners))
        return NULL;
    if (!unprotect || !rx || !protect || !tx) {
        PyErr_SetString(PyExc_ValueError, "null SRTP handle");
        return NULL;
    }
    unsigned long our_ssrc, in_ssrc, ts_delta, last_in_ts, last_out_ts;
    unsigned int seq_delta, max_in_seq, last_out_seq;
    int started;
    double clock_rate;
    PyObject *last_out_time;
    if (!PyArg_ParseTuple(rewrite, "kdpkIkIkIkO", &our_ssrc, &clock_rate, &started, &in_ssrc, &seq_delta,
                          &ts_delta, &max_in_seq, &last_in_ts, &last_out_seq, &last_out_ts, &last_out_time))
        return NULL;
    routes_t sip_routes, browser_routes;
    source_t rec_sip, rec_browser;
    if (parse_routes(to_sip, &sip_routes) < 0 || parse_routes(to_browser, &browser_routes) < 0 ||
        parse_source(rec_to_sip, &rec_sip) < 0 || parse_source(rec_to_browser, &rec_browser) < 0)
        return NULL;
    int has_last_out_time = last_out_time != Py_None;
    double last_out = 0.0;
    if (has_last_out_time) {
        last_out = PyFloat_AsDouble(last_out_time);
        if (last_out == -1.0 && PyErr_Occurred())
            return NULL;
    }
    self->unprotect = (srtp_fn)(uintptr_t)unprotect;
    self->rx = (void *)(uintptr_t)rx;
    self->protect = (srtp_fn)(uintptr_t)protect;
    self->tx = (void *)(uintptr_t)tx;
    Py_INCREF(owners);
    Py_XSETREF(self->srtp_owners, owners);
    Py_INCREF(to_sip);
    Py_INCREF(to_browser);
    Py_XSETREF(self->to_sip_obj, to_sip);
    Py_XSETREF(self->to_browser_obj, to_browser);
    self->to_sip_routes = sip_routes;
    self->to_browser_routes = browser_routes;
    self->our_ssrc = (uint32_t)our_ssrc;
    self->clock_rate = clock_rate;
    self->started = started;
    self->in_ssrc = (uint32_t)in_ssrc;
    self->seq_delta = (uint16_t)seq_delta;
    self->ts_delta = (uint32_t)ts_delta;
    self->max_in_seq = (uint16_t)max_in_seq;
    self->last_in_ts = (uint32_t)last_in_ts;
    self->last_out_seq = (uint16_t)last_out_seq;
    self->last_out_ts = (uint32_t)last_out_ts;
    self->has_last_out_time = has_last_out_time;
    self->last_out_time = last_out;
    self->rec_to_sip = rec_sip;
    self->rec_to_browser = rec_browser;
    self->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *SteadyRelay_collect(SteadyRelay *self, PyObject *Py_UNUSED(ignored)) {
    /* (rewrite state, reception sources, leg counters, media counters) since the last collect: the state
       goes back to Python, so this disarms; None if not armed (Python has the state already) */
    if (!self->armed)
        Py_RETURN_NONE;
    PyObject *last_out_time = optional_time(self->has_last_out_time, self->last_out_time);
    PyObject *media_time = optional_time(self->has_browser_media, self->last_browser_media);
    PyObject *rec_sip = source_tuple(&self->rec_to_sip);
    PyObject *rec_browser = source_tuple(&self->rec_to_browser);
    PyObject *to_sip = leg_tuple(&self->to_sip);
    PyObject *to_browser = leg_tuple(&self->to_browser);
    if (!last_out_time || !media_time || !rec_sip || !rec_browser || !to_sip || !to_browser) {
        Py_XDECREF(last_out_time);
        Py_XDECREF(media_time);
        Py_XDECREF(rec_sip);
        Py_XDECREF(rec_browser);
        Py_XDECREF(to_sip);
        Py_XDECREF(to_browser);
        return NULL;
    }
    PyObject *res = Py_BuildValue("((IkIkN)NNNN(LNL))", (unsigned int)self->max_in_seq,
                                  (unsigned long)self->last_in_ts, (unsigned int)self->last_out_seq,
                                  (unsigned long)self->last_out_ts, last_out_time, rec_sip, rec_browser, to_sip,
                                  to_browser, (long long)self->demux_rtp, media_time, (long long)self->send_failed);
    self->demux_rtp = 0;
    self->send_failed = 0;
    self->has_browser_media = 0;
    if (res != NULL)
        self->armed = 0;
    return res;
}

static PyObject *SteadyRelay_disarm(SteadyRelay *self, PyObject *Py_UNUSED(ignored)) {
    self->armed = 0;
    Py_RETURN_NONE;
}

static PyObject *SteadyRelay_get_armed(SteadyRelay *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->armed);
}

static PyObject *SteadyRelay_get_punts(SteadyRelay *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(self->punts);
}

/* -- the type --------------------------------------------------------------------------------------------- */

/* (host, port), host a numeric IPv4 or IPv6 address (no zone), into *ss: 0, or -1 with an exception set */
static int parse_address(PyObject *address, struct sockaddr_storage *ss, socklen_t *len) {
    const char *host;
    int port;
    if (!PyTuple_Check(address)) {
        PyErr_SetString(PyExc_TypeError, "an address is a (host, port) tuple");
        return -1;
    }
    if (!PyArg_ParseTuple(address, "si:address", &host, &port))
        return -1;
    if (port < 1 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "the port must be 1-65535");
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof *v6;
    } else {
        PyErr_Format(PyExc_ValueError, "%s is not a numeric IPv4 or IPv6 address", host);
        return -1;
    }
    return 0;
}

static int SteadyRelay_init(SteadyRelay *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"browser_fd", "sip_fd", "buffer", "browser_punt", "sip_punt", "browser_dest", NULL};
    int browser_fd, sip_fd;
    PyObject *buffer, *browser_punt, *sip_punt, *browser_dest = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiYOO|O:SteadyRelay", kwlist, &browser_fd, &sip_fd, &buffer,
                                     &browser_punt, &sip_punt, &browser_dest))
        return -1;
    memset(&self->browser_dest, 0, sizeof self->browser_dest);
    self->browser_dest_len = 0;
    if (browser_dest != Py_None && parse_address(browser_dest, &self->browser_dest, &self->browser_dest_len) < 0)
        return -1;
    if (PyByteArray_GET_SIZE(buffer) <= TRAILER_ROOM + 12) {
        PyErr_SetString(PyExc_ValueError, "the buffer is too small");
        return -1;
    }
    if (!PyCallable_Check(browser_punt) || !PyCallable_Check(sip_punt)) {
        PyErr_SetString(PyExc_TypeError, "the punt handlers must be callable");
        return -1;
    }
    self->browser_fd = browser_fd;
    self->sip_fd = sip_fd;
    Py_INCREF(buffer);
    Py_INCREF(browser_punt);
    Py_INCREF(sip_punt);
    Py_XSETREF(self->buffer, buffer);
    Py_XSETREF(self->browser_punt, browser_punt);
    Py_XSETREF(self->sip_punt, sip_punt);
    self->armed = 0;
    return 0;
}

static int SteadyRelay_traverse(SteadyRelay *self, visitproc visit, void *arg) {
    Py_VISIT(self->buffer);
    Py_VISIT(self->browser_punt);
    Py_VISIT(self->sip_punt);
    Py_VISIT(self->to_sip_obj);
    Py_VISIT(self->to_browser_obj);
    Py_VISIT(self->srtp_owners);
    return 0;
}

static int SteadyRelay_clear(SteadyRelay *self) {
    self->armed = 0;
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->browser_punt);
    Py_CLEAR(self->sip_punt);
    Py_CLEAR(self->to_sip_obj);
    Py_CLEAR(self->to_browser_obj);
    Py_CLEAR(self->srtp_owners);
    return 0;
}

static void SteadyRelay_dealloc(SteadyRelay *self) {
    PyObject_GC_UnTrack(self);
    SteadyRelay_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef SteadyRelay_methods[] = {
    {"browser", (PyCFunction)SteadyRelay_browser, METH_O,
     "browser(now) -> bool: one datagram from the browser's twin, relayed or punted; False if none"},
    {"browser_in", (PyCFunction)SteadyRelay_browser_in, METH_VARARGS,
     "browser_in(n, now) -> True: the browser's datagram of n bytes, already in the buffer (no browser twin), "
     "relayed or punted"},
    {"sip", (PyCFunction)SteadyRelay_sip, METH_O,
     "sip(now) -> bool: one datagram from the SIP leg's twin, relayed or punted; False if none"},
    {"arm", (PyCFunction)(void (*)(void))SteadyRelay_arm, METH_VARARGS | METH_KEYWORDS,
     "arm(srtp, to_sip, to_browser, rewrite, rec_to_sip, rec_to_browser): take the relay's state"},
    {"collect", (PyCFunction)SteadyRelay_collect, METH_NOARGS,
     "collect() -> the state and the counters' increments since the last collect, and disarm; None if not armed"},
    {"disarm", (PyCFunction)SteadyRelay_disarm, METH_NOARGS, "disarm(): punt every datagram from now on"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef SteadyRelay_getset[] = {
    {"armed", (getter)SteadyRelay_get_armed, NULL, "whether datagrams are relayed here", NULL},
    {"punts", (getter)SteadyRelay_get_punts, NULL, "datagrams handed to Python so far", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SteadyRelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtp._steady.SteadyRelay",
    .tp_basicsize = sizeof(SteadyRelay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The steady media stream of one call, relayed in C (see the module's source).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SteadyRelay_init,
    .tp_dealloc = (destructor)SteadyRelay_dealloc,
    .tp_traverse = (traverseproc)SteadyRelay_traverse,
    .tp_clear = (inquiry)SteadyRelay_clear,
    .tp_methods = SteadyRelay_methods,
    .tp_getset = SteadyRelay_getset,
};

/* -- SharedDemux: the shared browser port without connected twins (rtp.browser_port) --------------------------

   On a kernel with no 4-tuple hash for connected UDP sockets, the single-port mode opens no twins: every
   browser datagram of the worker comes to the one shared socket. Called by the plane as the socket's handler,
   a SharedDemux reads up to `reads` datagrams into the plane's buffer and looks each one's source up among the
   routed addresses (a call's nominated browser address, `route`d once its SteadyRelay exists): a routed one
   goes to that SteadyRelay as its twin's would (relayed, or punted to the call's Python handler); any other
   to `punt(n, (host, port), now)` (the port's routing by ufrag and validated address, rtp.browser_port). If a
   call's punt handler raises, `failed((host, port), exception)` is told and the address unrouted: the
   other calls go on. The routes are a dict keyed by the address's bytes. */

typedef struct {
    PyObject_HEAD
    int fd, reads;
    PyObject *buffer, *punt, *failed;
    PyObject *routes; /* bytes key (address family, port, address) -> SteadyRelay */
    int64_t relayed, punted;
} SharedDemux;

static PyTypeObject SharedDemuxType;

/* The route key of an address: family, port and address bytes (IPv6 flow label and zone left out). */
static PyObject *address_key(const struct sockaddr_storage *ss) {
    uint8_t key[1 + 2 + 16];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)ss;
        key[0] = 4;
        memcpy(key + 1, &v4->sin_port, 2);
        memcpy(key + 3, &v4->sin_addr, 4);
        return PyBytes_FromStringAndSize((const char *)key, 7);
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)ss;
        key[0] = 6;
        memcpy(key + 1, &v6->sin6_port, 2);
        memcpy(key + 3, &v6->sin6_addr, 16);
        return PyBytes_FromStringAndSize((const char *)key, 19);
    }
    Py_RETURN_NONE;
}

/* (host, port) as Python's socket module gives it (rtp.browser_port keys on that) */
static PyObject *address_tuple(const struct sockaddr_storage *ss, socklen_t len) {
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo((const struct sockaddr *)ss, len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        return Py_BuildValue("(si)", "", 0);
    return Py_BuildValue("(si)", host, atoi(serv));
}

static PyObject *SharedDemux_call(SharedDemux *self, PyObject *args, PyObject *kwargs) {
    double now;
    if (!PyArg_ParseTuple(args, "d:SharedDemux", &now))
        return NULL;
    if (self->buffer == NULL) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    int read = 0;
    while (read < self->reads) {
        uint8_t *d = (uint8_t *)PyByteArray_AS_STRING(self->buffer);
        Py_ssize_t size = PyByteArray_GET_SIZE(self->buffer);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        ssize_t n = recvfrom(self->fd, d, (size_t)size, MSG_DONTWAIT, (struct sockaddr *)&ss, &sl);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* empty (EAGAIN), or an ICMP error queued: as a Python recvfrom's OSError */
        }
        read++;
        PyObject *key = address_key(&ss);
        if (key == NULL)
            return NULL;
        PyObject *relay = PyDict_GetItemWithError(self->routes, key); /* borrowed */
        if (relay == NULL && PyErr_Occurred()) {
            Py_DECREF(key);
            return NULL;
        }
        if (relay != NULL) {
            Py_INCREF(relay);
            self->relayed++;
            int r = browser_relay((SteadyRelay *)relay, d, (Py_ssize_t)n, now);
            Py_DECREF(relay);
            if (r < 0) { /* the call's punt handler raised: that call only */
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                PyErr_NormalizeException(&type, &value, &tb);
                if (tb != NULL && value != NULL)
                    PyException_SetTraceback(value, tb);
                if (PyDict_DelItem(self->routes, key) < 0)
                    PyErr_Clear();
                PyObject *src = address_tuple(&ss, sl);
                PyObject *res = src ? PyObject_CallFunctionObjArgs(self->failed, src, value ? value : Py_None, NULL)
                                    : NULL;
                Py_XDECREF(src);
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
                if (res == NULL) {
                    Py_DECREF(key);
                    return NULL;
                }
                Py_DECREF(res);
            }
        } else {
            self->punted++;
            PyObject *src = address_tuple(&ss, sl);
            PyObject *res = src ? PyObject_CallFunction(self->punt, "nOd", (Py_ssize_t)n, src, now) : NULL;
            Py_XDECREF(src);
            if (res == NULL) {
                Py_DECREF(key);
                return NULL;
            }
            Py_DECREF(res);
        }
        Py_DECREF(key);
    }
    return PyBool_FromLong(read > 0);
}

static PyObject *SharedDemux_route(SharedDemux *self, PyObject *args) {
    PyObject *address, *relay;
    if (!PyArg_ParseTuple(args, "OO!:route", &address, &SteadyRelayType, &relay))
        return NULL;
    struct sockaddr_storage ss;
    socklen_t len;
    if (parse_address(address, &ss, &len) < 0)
        return NULL;
    PyObject *key = address_key(&ss);
    if (key == NULL)
        return NULL;
    int r = PyDict_SetItem(self->routes, key, relay);
    Py_DECREF(key);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *SharedDemux_unroute(SharedDemux *self, PyObject *args) {
    PyObject *address, *relay = Py_None;
    if (!PyArg_ParseTuple(args, "O|O:unroute", &address, &relay))
        return NULL;
    struct sockaddr_storage ss;
    socklen_t len;
    if (parse_address(address, &ss, &len) < 0)
        return NULL;
    PyObject *key = address_key(&ss);
    if (key == NULL)
        return NULL;
    PyObject *current = PyDict_GetItemWithError(self->routes, key);
    int r = 0;
    if (current != NULL && (relay == Py_None || current == relay)) /* only the given relay's route */
        r = PyDict_DelItem(self->routes, key);
    Py_DECREF(key);
    if (r < 0 || (current == NULL && PyErr_Occurred()))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *SharedDemux_len(SharedDemux *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(PyDict_GET_SIZE(self->routes));
}

static PyObject *SharedDemux_counts(SharedDemux *self, void *Py_UNUSED(closure)) {
    return Py_BuildValue("(LL)", (long long)self->relayed, (long long)self->punted);
}

static int SharedDemux_init(SharedDemux *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"fd", "buffer", "punt", "failed", "reads", NULL};
    int fd, reads;
    PyObject *buffer, *punt, *failed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iYOOi:SharedDemux", kwlist, &fd, &buffer, &punt, &failed,
                                     &reads))
        return -1;
    if (fd < 0 || reads < 1) {
        PyErr_SetString(PyExc_ValueError, "a descriptor and reads >= 1 are needed");
        return -1;
    }
    if (PyByteArray_GET_SIZE(buffer) <= TRAILER_ROOM + 12) {
        PyErr_SetString(PyExc_ValueError, "the buffer is too small");
        return -1;
    }
    if (!PyCallable_Check(punt) || !PyCallable_Check(failed)) {
        PyErr_SetString(PyExc_TypeError, "punt and failed must be callable");
        return -1;
    }
    PyObject *routes = PyDict_New();
    if (routes == NULL)
        return -1;
    self->fd = fd;
    self->reads = reads;
    Py_INCREF(buffer);
    Py_INCREF(punt);
    Py_INCREF(failed);
    Py_XSETREF(self->buffer, buffer);
    Py_XSETREF(self->punt, punt);
    Py_XSETREF(self->failed, failed);
    Py_XSETREF(self->routes, routes);
    return 0;
}

static int SharedDemux_traverse(SharedDemux *self, visitproc visit, void *arg) {
    Py_VISIT(self->buffer);
    Py_VISIT(self->punt);
    Py_VISIT(self->failed);
    Py_VISIT(self->routes);
    return 0;
}

static int SharedDemux_clear(SharedDemux *self) {
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->punt);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->routes);
    return 0;
}

static void SharedDemux_dealloc(SharedDemux *self) {
    PyObject_GC_UnTrack(self);
    SharedDemux_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef SharedDemux_methods[] = {
    {"route", (PyCFunction)SharedDemux_route, METH_VARARGS,
     "route((host, port), relay): that address's datagrams go to the SteadyRelay from now on"},
    {"unroute", (PyCFunction)SharedDemux_unroute, METH_VARARGS,
     "unroute((host, port)[, relay]): no route for that address (only if it is relay's, if given)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef SharedDemux_getset[] = {
    {"routes", (getter)SharedDemux_len, NULL, "how many addresses are routed", NULL},
    {"counts", (getter)SharedDemux_counts, NULL, "(datagrams handed to a routed relay, punted)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SharedDemuxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtp._steady.SharedDemux",
    .tp_basicsize = sizeof(SharedDemux),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The shared browser port's reader without twins: routed addresses to their SteadyRelay.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SharedDemux_init,
    .tp_call = (ternaryfunc)SharedDemux_call,
    .tp_dealloc = (destructor)SharedDemux_dealloc,
    .tp_traverse = (traverseproc)SharedDemux_traverse,
    .tp_clear = (inquiry)SharedDemux_clear,
    .tp_methods = SharedDemux_methods,
    .tp_getset = SharedDemux_getset,
};

static struct PyModuleDef steady_module = {
    PyModuleDef_HEAD_INIT, .m_name = "rtp._steady",
    .m_doc = "The steady media stream of a call, relayed in C (rtp.media uses it when built).", .m_size = -1,
};

PyMODINIT_FUNC PyInit__steady(void) {
    if (PyType_Ready(&SteadyRelayType) < 0 || PyType_Ready(&DispatcherType) < 0 ||
        PyType_Ready(&SharedDemuxType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&steady_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SteadyRelayType);
    if (PyModule_AddObject(m, "SteadyRelay", (PyObject *)&SteadyRelayType) < 0) {
        Py_DECREF(&SteadyRelayType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&DispatcherType);
    if (PyModule_AddObject(m, "Dispatcher", (PyObject *)&DispatcherType) < 0) {
        Py_DECREF(&DispatcherType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SharedDemuxType);
    if (PyModule_AddObject(m, "SharedDemux", (PyObject *)&SharedDemuxType) < 0) {
        Py_DECREF(&SharedDemuxType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
