/* rtp._steady.Dispatcher: one pass of the media plane in C (issue 6).

   `rtp.plane.MediaPlane.run` defines a pass in Python: poll the epoll without waiting, call each ready
   socket's handler with `now`, read one datagram per socket unless it holds a backlog (served in the
   previous pass too, or the pass saturated), then up to `drain_cap` (the drain rule, rtp.plane). Once
   calls relay their steady stream in C (_steady.c), that loop is most of the Python left per packet:
   building the event list, a dictionary lookup, a bound-method call and a truth test for each ready socket.
   This is the same pass with the same rule, in C: `serve(now, failures)` runs it and returns the number of
   ready sockets (0: nothing was ready, the plane awaits the epoll). A handler that is a SteadyRelay's
   `browser` or `sip` method is run directly (steady_datagram); any other is called as Python.

   A handler that raises an Exception does not stop the pass: (fd, handler, exception) goes to
   `failures` for the plane to unregister and report after it; anything else (KeyboardInterrupt, ...)
   propagates at once. Handlers may register, replace and unregister sockets during a pass (the table
   is looked up by descriptor after every call, never through a pointer kept across one).

   It also owns the plane's coalescing timer (`arm`, `timer_fd`: a timerfd Trio waits on between busy
   passes, instead of a Trio sleep).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "_steady.h"

typedef struct {
    PyObject *handler; /* NULL: the descriptor is not registered */
    int kind;          /* STEADY_OTHER, STEADY_BROWSER or STEADY_SIP (steady_kind) */
    int64_t served;    /* the pass that last served it (the drain rule) */
} entry_t;

typedef struct {
    PyObject_HEAD
    int epfd;
    int timer_fd; /* the coalescing wait (arm): -1 once closed */
    int max_events, drain_cap;
    struct epoll_event *events;
    entry_t *entries; /* indexed by descriptor */
    int capacity;
    Py_ssize_t count;
    int64_t passes;
} Dispatcher;

static int valid_fd(PyObject *arg, int *fd) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT32_MAX / 4) {
        PyErr_SetString(PyExc_ValueError, "not a descriptor");
        return -1;
    }
    *fd = (int)v;
    return 0;
}

static int grow(Dispatcher *self, int fd) {
    if (fd < self->capacity)
        return 0;
    int capacity = self->capacity ? self->capacity : 256;
    while (capacity <= fd) {
        capacity *= 2;
    }
    entry_t *entries = PyMem_Realloc(self->entries, (size_t)capacity * sizeof(entry_t));
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(entries + self->capacity, 0, (size_t)(capacity - self->capacity) * sizeof(entry_t));
    self->entries = entries;
    self->capacity = capacity;
    return 0;
}

/* (fd, handler) of add / replace: a descriptor and a callable */
static int fd_and_handler(PyObject *args, const char *format, PyObject **fd_obj, int *fd, PyObject **handler) {
    if (!PyArg_ParseTuple(args, format, fd_obj, handler) || valid_fd(*fd_obj, fd) < 0)
        return -1;
    if (!PyCallable_Check(*handler)) {
        PyErr_SetString(PyExc_TypeError, "the handler must be callable");
        return -1;
    }
    return 0;
}

static PyObject *Dispatcher_add(Dispatcher *self, PyObject *args) {
    PyObject *fd_obj, *handler;
    int fd;
    if (fd_and_handler(args, "OO:add", &fd_obj, &fd, &handler) < 0)
        return NULL;
    if (grow(self, fd) < 0)
        return NULL;
    entry_t *e = &self->entries[fd];
    if (e->handler != NULL) {
        PyErr_Format(PyExc_ValueError, "descriptor %d is already registered", fd);
        return NULL;
    }
    Py_INCREF(handler);
    e->handler = handler;
    e->kind = steady_kind(handler);
    e->served = -2;
    self->count++;
    Py_RETURN_NONE;
}

static PyObject *Dispatcher_replace(Dispatcher *self, PyObject *args) {
    PyObject *fd_obj, *handler;
    int fd;
    if (fd_and_handler(args, "OO:replace", &fd_obj, &fd, &handler) < 0)
        return NULL;
    if (fd >= self->capacity || self->entries[fd].handler == NULL) {
        PyErr_SetObject(PyExc_KeyError, fd_obj);
        return NULL;
    }
    entry_t *e = &self->entries[fd];
    PyObject *old = e->handler;
    Py_INCREF(handler);
    e->handler = handler;
    e->kind = steady_kind(handler);
    Py_DECREF(old); /* last: it may run arbitrary code */
    Py_RETURN_NONE;
}

static PyObject *Dispatcher_remove(Dispatcher *self, PyObject *fd_obj) {
    int fd;
    if (valid_fd(fd_obj, &fd) < 0)
        return NULL;
    if (fd < self->capacity && self->entries[fd].handler != NULL) {
        self->count--;
        Py_CLEAR(self->entries[fd].handler);
    }
    Py_RETURN_NONE;
}

/* One handler call: 1 a datagram, 0 none, -1 an exception set. */
static int call(PyObject *handler, int kind, double now, PyObject **now_obj) {
    if (kind != STEADY_OTHER)
        return steady_datagram(handler, kind, now);
    if (*now_obj == NULL && (*now_obj = PyFloat_FromDouble(now)) == NULL)
        return -1;
    PyObject *res = PyObject_CallOneArg(handler, *now_obj);
    if (res == NULL)
        return -1;
    int truth = PyObject_IsTrue(res);
    Py_DECREF(res);
    return truth;
}

/* The handler's Exception as (fd, handler, exception) in `failures`; -1 if it must propagate instead. */
static int record_failure(PyObject *failures, int fd, PyObject *handler) {
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
#endif
    PyObject *item = Py_BuildValue("(iOO)", fd, handler, exc);
    Py_XDECREF(exc);
    if (item == NULL)
        return -1;
    int res = PyList_Append(failures, item);
    Py_DECREF(item);
    return res;
}

static PyObject *Dispatcher_serve(Dispatcher *self, PyObject *args) {
    double now;
    PyObject *failures;
    if (!PyArg_ParseTuple(args, "dO!:serve", &now, &PyList_Type, &failures))
        return NULL;
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "the dispatcher is closed");
        return NULL;
    }
    int n;
    do {
        n = epoll_wait(self->epfd, self->events, self->max_events, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (n == 0)
        return PyLong_FromLong(0);
    int64_t passes = ++self->passes;
    int saturated = n >= self->max_events;
    PyObject *now_obj = NULL; /* made once, for the Python handlers only */
    for (int i = 0; i < n; i++) {
        int fd = self->events[i].data.fd;
        if (fd < 0 || fd >= self->capacity || self->entries[fd].handler == NULL)
            continue; /* unregistered earlier in this pass */
        entry_t *e = &self->entries[fd];
        int backlog = saturated || e->served == passes - 1;
        e->served = passes;
        PyObject *handler = e->handler;
        int kind = e->kind;
        Py_INCREF(handler); /* the handler may unregister itself: it lives until we are done with it */
        int r = call(handler, kind, now, &now_obj);
        if (r == 1 && backlog) {
            for (int k = 1; k < self->drain_cap; k++) {
                if (fd >= self->capacity || self->entries[fd].handler != handler)
                    break; /* replaced or unregistered by what it did */
                if ((r = call(handler, kind, now, &now_obj)) != 1)
                    break;
            }
        }
        if (r < 0 && record_failure(failures, fd, handler) < 0) {
            Py_DECREF(handler);
            Py_XDECREF(now_obj);
            return NULL;
        }
        Py_DECREF(handler);
    }
    Py_XDECREF(now_obj);
    return PyLong_FromLong(n);
}

/* The coalescing wait (rtp.plane): the timer fires once, `delay` seconds from now; what fired before
   is forgotten (the descriptor is readable again only when this one fires). Trio waits for it to be
   readable: no cancel scope, no deadline, no Cancelled raised and caught per pass as a sleep costs. */
static PyObject *Dispatcher_arm(Dispatcher *self, PyObject *arg) {
    double delay = PyFloat_AsDouble(arg);
    if (delay == -1.0 && PyErr_Occurred())
        return NULL;
    if (self->timer_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "the dispatcher is closed");
        return NULL;
    }
    uint64_t expirations;
    while (read(self->timer_fd, &expirations, sizeof expirations) < 0 && errno == EINTR)
        ; /* EAGAIN: nothing fired since the last arm */
    if (!(delay > 0))
        delay = 1e-9; /* 0 would disarm it: fire at once instead */
    if (delay > 3600)
        delay = 3600;
    struct itimerspec spec = {{0, 0}, {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)}};
    if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0)
        spec.it_value.tv_nsec = 1;
    if (timerfd_settime(self->timer_fd, 0, &spec, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *Dispatcher_get_timer_fd(Dispatcher *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(self->timer_fd);
}

/* Forget the epoll (its owner closes it: its number may be reused) and every handler; close the timer
   (after Trio was told: rtp.plane). */
static PyObject *Dispatcher_close(Dispatcher *self, PyObject *Py_UNUSED(ignored)) {
    if (self->timer_fd >= 0) {
        close(self->timer_fd);
        self->timer_fd = -1;
    }
    self->epfd = -1;
    for (int fd = 0; fd < self->capacity; fd++)
        Py_CLEAR(self->entries[fd].handler);
    self->count = 0;
    Py_RETURN_NONE;
}

static Py_ssize_t Dispatcher_len(Dispatcher *self) {
    return self->count;
}

static PyObject *Dispatcher_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    Dispatcher *self = (Dispatcher *)PyType_GenericNew(type, args, kwargs);
    if (self != NULL) {
        self->epfd = -1; /* not 0: nothing here is descriptor 0 until init says so */
        self->timer_fd = -1;
    }
    return (PyObject *)self;
}

static int Dispatcher_init(Dispatcher *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"epoll_fd", "max_events", "drain_cap", NULL};
    int epfd, max_events, drain_cap;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iii:Dispatcher", kwlist, &epfd, &max_events, &drain_cap))
        return -1;
    if (epfd < 0 || max_events < 1 || max_events > 65536 || drain_cap < 1) {
        PyErr_SetString(PyExc_ValueError, "epoll_fd >= 0, 1 <= max_events <= 65536, drain_cap >= 1");
        return -1;
    }
    if (self->events != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Dispatcher is initialised once");
        return -1;
    }
    self->events = PyMem_Calloc((size_t)max_events, sizeof(struct epoll_event));
    if (self->events == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (self->timer_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->epfd = epfd;
    self->max_events = max_events;
    self->drain_cap = drain_cap;
    return 0;
}

static int Dispatcher_traverse(Dispatcher *self, visitproc visit, void *arg) {
    for (int fd = 0; fd < self->capacity; fd++)
        Py_VISIT(self->entries[fd].handler);
    return 0;
}

static int Dispatcher_clear(Dispatcher *self) {
    for (int fd = 0; fd < self->capacity; fd++)
        Py_CLEAR(self->entries[fd].handler);
    self->count = 0;
    return 0;
}

static void Dispatcher_dealloc(Dispatcher *self) {
    PyObject_GC_UnTrack(self);
    Dispatcher_clear(self);
    if (self->timer_fd >= 0)
        close(self->timer_fd);
    PyMem_Free(self->entries);
    PyMem_Free(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Dispatcher_methods[] = {
    {"add", (PyCFunction)Dispatcher_add, METH_VARARGS, "add(fd, handler): serve fd with handler(now)"},
    {"replace", (PyCFunction)Dispatcher_replace, METH_VARARGS, "replace(fd, handler); KeyError if not added"},
    {"remove", (PyCFunction)Dispatcher_remove, METH_O, "remove(fd): idempotent"},
    {"arm", (PyCFunction)Dispatcher_arm, METH_O,
     "arm(delay): the timer descriptor becomes readable once, delay seconds from now"},
    {"close", (PyCFunction)Dispatcher_close, METH_NOARGS,
     "close(): forget the epoll and every handler (serve raises ValueError from then on)"},
    {"serve", (PyCFunction)Dispatcher_serve, METH_VARARGS,
     "serve(now, failures) -> the number of ready descriptors served (one pass; 0: none was ready)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Dispatcher_getset[] = {
    {"timer_fd", (getter)Dispatcher_get_timer_fd, NULL, "the coalescing timer's descriptor (-1 once closed)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Dispatcher_as_sequence = {.sq_length = (lenfunc)Dispatcher_len};

PyTypeObject DispatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtp._steady.Dispatcher",
    .tp_basicsize = sizeof(Dispatcher),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One pass of the media plane over an epoll, in C (see the module's source, _dispatch.c).",
    .tp_new = Dispatcher_new,
    .tp_init = (initproc)Dispatcher_init,
    .tp_dealloc = (destructor)Dispatcher_dealloc,
    .tp_traverse = (traverseproc)Dispatcher_traverse,
    .tp_clear = (inquiry)Dispatcher_clear,
    .tp_methods = Dispatcher_methods,
    .tp_getset = Dispatcher_getset,
    .tp_as_sequence = &Dispatcher_as_sequence,
};
