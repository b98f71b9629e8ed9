/* rtp._steady's two parts: the steady relay (_steady.c) and the media plane's dispatcher (_dispatch.c). */
#ifndef RTP_STEADY_H
#define RTP_STEADY_H

#include <Python.h>

enum { STEADY_OTHER = 0, STEADY_BROWSER = 1, STEADY_SIP = 2 };

/* Which of a SteadyRelay's handlers `handler` is (its bound `browser` or `sip`), or STEADY_OTHER. */
int steady_kind(PyObject *handler);

/* Serve one datagram as the bound method `handler` of kind `kind` would, without the call:
   1 read, 0 none, -1 a Python punt handler raised (its exception set). */
int steady_datagram(PyObject *handler, int kind, double now);

/* The dispatcher's type, ready to add to the module (_dispatch.c). */
extern PyTypeObject DispatcherType;

#endif
