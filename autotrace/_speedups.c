/*
 * autotrace._speedups: the light span's OTLP encoding in C (optional).
 *
 * What it does: encode_light(span) returns the bytes of the ``ScopeSpans.spans`` field
 * (tag, length, ``Span`` message) of a light span (autotrace/light_span.py), exactly the
 * bytes the pure-Python reference, autotrace.otlp_encode._encode_light_py, returns (which
 * are the SDK encoder's). It handles the common case only:
 *
 *   - the span context and the parent's (or no parent) are exact SpanContext tuples; the
 *     trace state is the default one, or of a configured class whose members are a plain
 *     dict of str (the API's TraceState, the agent's W3CTraceState);
 *   - the name is a str, the kind one of the SpanKind members, the times plain ints;
 *   - the attributes are a plain dict of str keys and str/bool/int/float values;
 *   - no events, no links (both still the empty tuple a light span starts with);
 *   - the status is the shared UNSET status, or an exact Status.
 *
 * Anything else (the SDK's BoundedAttributes, events, a string that is not
 * valid UTF-8, an odd type anywhere) is not handled here: encode_light then calls the
 * Python fallback given to configure(), which knows every case. The core function returns
 * None for "not handled" (encode_light_common exposes it, for the tests), and NULL with a
 * Python error set only for a real failure (no memory): the caller's fail-open path
 * (span_queue.light_end) handles that as it handles the Python encoder's exceptions.
 *
 * QueueState(...).light_end(span) is EncodingBatchProcessor.light_end + _put in one call:
 * the sampled check, the encoding, and the queue append under the processor's lock with
 * its span and byte bounds, read from the state object (no attribute look-up per span).
 * Anything unusual returns to the Python method.
 *
 * The protobuf wire format is written directly: varints, fixed64/fixed32 little-endian,
 * length-delimited fields. Field numbers are those of opentelemetry/proto (the Python
 * module's constants; tests/test_otlp_encode.py checks them against the generated code).
 * No Python code runs while the encoder walks the span's state, except for a set status
 * (its two public properties) and the fallback.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#ifndef Py_T_OBJECT_EX /* its name from 3.12 on; structmember.h's before */
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_T_BOOL T_BOOL
#endif

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}

static inline PyObject *
Py_XNewRef(PyObject *obj)
{
    Py_XINCREF(obj);
    return obj;
}
#endif

#if PY_VERSION_HEX < 0x030B0000
/* Public from 3.11 on; the same function under its older, underscored name before. */
#define PyFloat_Pack8 _PyFloat_Pack8
#endif

/* -- wire format ---------------------------------------------------------------------- */

#define WT_VARINT 0
#define WT_I64 1
#define WT_LEN 2
#define WT_I32 5
#define TAG(field, wire_type) (((field) << 3) | (wire_type))

/* ScopeSpans.spans */
#define T_SS_SPANS TAG(2, WT_LEN)
/* Span */
#define T_SPAN_TRACE_ID TAG(1, WT_LEN)
#define T_SPAN_SPAN_ID TAG(2, WT_LEN)
#define T_SPAN_TRACE_STATE TAG(3, WT_LEN)
#define T_SPAN_PARENT_SPAN_ID TAG(4, WT_LEN)
#define T_SPAN_NAME TAG(5, WT_LEN)
#define T_SPAN_START TAG(7, WT_I64)
#define T_SPAN_END TAG(8, WT_I64)
#define T_SPAN_ATTRIBUTES TAG(9, WT_LEN)
#define T_SPAN_STATUS TAG(15, WT_LEN)
#define T_SPAN_FLAGS TAG(16, WT_I32) /* two bytes as a varint: 0x85 0x01 */
/* Status */
#define T_STATUS_MESSAGE TAG(2, WT_LEN)
#define T_STATUS_CODE TAG(3, WT_VARINT)
/* KeyValue */
#define T_KV_KEY TAG(1, WT_LEN)
#define T_KV_VALUE TAG(2, WT_LEN)
/* AnyValue */
#define T_ANY_STRING TAG(1, WT_LEN)
#define T_ANY_BOOL TAG(2, WT_VARINT)
#define T_ANY_INT TAG(3, WT_VARINT)
#define T_ANY_DOUBLE TAG(4, WT_I64)

/* Span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, plus ..._IS_REMOTE_MASK for a remote parent. */
#define FLAG_HAS_IS_REMOTE 0x100u
#define FLAG_IS_REMOTE 0x200u

/* The number of bytes of n as a varint. */
static inline Py_ssize_t
varint_size(uint64_t n)
{
    Py_ssize_t size = 1;
    while (n >= 0x80) {
        n >>= 7;
        size++;
    }
    return size;
}

/* A growing output buffer: on the stack for a usual span, on the heap past that. */
#define BUF_STACK 1024

typedef struct {
    unsigned char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    unsigned char stack[BUF_STACK];
} Buf;

static void
buf_init(Buf *buf)
{
    buf->data = buf->stack;
    buf->len = 0;
    buf->cap = BUF_STACK;
}

static void
buf_free(Buf *buf)
{
    if (buf->data != buf->stack) {
        PyMem_Free(buf->data);
    }
    buf->data = buf->stack;
}

/* Room for `more` bytes after what is written; 0, or -1 with MemoryError set. */
static int
buf_reserve(Buf *buf, Py_ssize_t more)
{
    if (more > PY_SSIZE_T_MAX - buf->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = buf->len + more;
    if (need <= buf->cap) {
        return 0;
    }
    Py_ssize_t cap = buf->cap;
    while (cap < need) {
        cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    }
    unsigned char *data;
    if (buf->data == buf->stack) {
        data = PyMem_Malloc((size_t)cap);
        if (data != NULL) {
            memcpy(data, buf->stack, (size_t)buf->len);
        }
    }
    else {
        data = PyMem_Realloc(buf->data, (size_t)cap);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buf->data = data;
    buf->cap = cap;
    return 0;
}

/* The writers below assume the room was reserved. */
static inline void
put_byte(Buf *buf, unsigned char byte)
{
    buf->data[buf->len++] = byte;
}

static inline void
put_varint(Buf *buf, uint64_t n)
{
    while (n >= 0x80) {
        buf->data[buf->len++] = (unsigned char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    buf->data[buf->len++] = (unsigned char)n;
}

static inline void
put_bytes(Buf *buf, const void *bytes, Py_ssize_t n)
{
    memcpy(buf->data + buf->len, bytes, (size_t)n);
    buf->len += n;
}

static inline void
put_fixed64(Buf *buf, uint64_t n) /* little-endian */
{
    for (int i = 0; i < 8; i++) {
        buf->data[buf->len++] = (unsigned char)(n >> (8 * i));
    }
}

static inline void
put_fixed32(Buf *buf, uint32_t n) /* little-endian */
{
    for (int i = 0; i < 4; i++) {
        buf->data[buf->len++] = (unsigned char)(n >> (8 * i));
    }
}

static inline void
put_be64(Buf *buf, uint64_t n) /* big-endian: ids, as int.to_bytes(..., "big") */
{
    for (int i = 7; i >= 0; i--) {
        buf->data[buf->len++] = (unsigned char)(n >> (8 * i));
    }
}

/* -- configuration (set once by autotrace.otlp_encode) ------------------------------ */

#define MAX_KINDS 8
#define MAX_CODES 4
#define MAX_STATE_TYPES 4

static PyObject *span_context_type;   /* opentelemetry.trace.SpanContext */
static PyObject *default_trace_state; /* opentelemetry.trace.span.DEFAULT_TRACE_STATE */
static PyObject *unset_status;        /* otlp_encode.UNSET_STATUS, shared by light spans */
static PyObject *status_type;         /* opentelemetry.trace.Status */
static PyObject *fallback;            /* otlp_encode._encode_light_py */
static PyObject *kind_members[MAX_KINDS];
static unsigned char kind_field[MAX_KINDS][4]; /* the encoded Span.kind field */
static Py_ssize_t kind_field_len[MAX_KINDS];
static Py_ssize_t n_kinds;
static PyObject *code_members[MAX_CODES];
static uint64_t code_values[MAX_CODES];
static Py_ssize_t n_codes;
static PyObject *state_types[MAX_STATE_TYPES];  /* trace state classes ... */
static PyObject *state_fields[MAX_STATE_TYPES]; /* ... and the name of their members' dict */
static Py_ssize_t n_state_types;

/* The light span class (register_light_class) and where its instances keep the fields the
   encoder reads: the offsets of its __slots__, read from its member descriptors. A span of
   exactly that class is read there directly; any other object through getattr. */
#define N_SPAN_FIELDS 12
static PyTypeObject *light_type;
static Py_ssize_t light_offsets[N_SPAN_FIELDS];

/* Interned attribute names. */
static PyObject *s_context, *s_parent, *s_name, *s_kind, *s_start_time, *s_end_time, *s_attributes,
    *s_events, *s_links, *s_status, *s_description, *s_status_code, *s_resource, *s_scope,
    *s_shutdown, *s_lock, *s_queue, *s_bytes, *s_max_queue_size, *s_max_queue_bytes,
    *s_max_batch_size, *s_max_batch_bytes, *s_acquire, *s_release, *s_append, *s_rest;

/* -- reading the span's state --------------------------------------------------------- */

/* Outcomes of the readers: handled, not handled (the Python way then), an error set. */
#define OK 0
#define NOT_HANDLED 1
#define FAILED -1

/* An exact int in [0, 2**64) as a uint64. */
static int
read_u64(PyObject *obj, uint64_t *out)
{
    if (!PyLong_CheckExact(obj)) {
        return NOT_HANDLED;
    }
    /* Below 2**63 (every time, half the ids): the signed conversion, a loop over the
       digits; PyLong_AsUnsignedLongLong goes through a byte array (several times the cost). */
    int overflow = 0;
    long long small = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow == 0) {
        if (small < 0) {
            PyErr_Clear(); /* negative: Python's to_bytes / struct raises */
            return NOT_HANDLED;
        }
        *out = (uint64_t)small;
        return OK;
    }
    if (overflow < 0) {
        return NOT_HANDLED;
    }
    uint64_t value = PyLong_AsUnsignedLongLong(obj);
    if (value == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* negative or too big: Python's to_bytes / struct raises */
        return NOT_HANDLED;
    }
    *out = value;
    return OK;
}

/* An exact int in [0, 2**128) as two uint64 (high, low). Without an exception on the way
   (an exception object costs more than the rest of the encoding): CPython's own conversion
   to bytes, public from 3.13, its older private name before. */
static int
read_u128(PyObject *obj, uint64_t *high, uint64_t *low)
{
    if (!PyLong_CheckExact(obj)) {
        return NOT_HANDLED;
    }
    unsigned char bytes[16]; /* big-endian */
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t needed = PyLong_AsNativeBytes(
        obj, bytes, 16, Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER | Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (needed < 0) {
        PyErr_Clear(); /* negative: Python's to_bytes raises */
        return NOT_HANDLED;
    }
    if (needed > 16) {
        return NOT_HANDLED; /* too big for 16 bytes: likewise */
    }
#else
    if (_PyLong_AsByteArray((PyLongObject *)obj, bytes, 16, 0, 0) < 0) {
        PyErr_Clear(); /* negative, or too big for 16 bytes: Python's to_bytes raises */
        return NOT_HANDLED;
    }
#endif
    uint64_t h = 0, l = 0;
    for (int i = 0; i < 8; i++) {
        h = (h << 8) | bytes[i];
        l = (l << 8) | bytes[8 + i];
    }
    *high = h;
    *low = l;
    return OK;
}

/* The UTF-8 of an exact str (borrowed from the str object). */
static int
read_utf8(PyObject *obj, const char **data, Py_ssize_t *size)
{
    if (!PyUnicode_CheckExact(obj)) {
        return NOT_HANDLED;
    }
    *data = PyUnicode_AsUTF8AndSize(obj, size);
    if (*data == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear(); /* a lone surrogate: the Python way says what becomes of it */
            return NOT_HANDLED;
        }
        return FAILED;
    }
    return OK;
}

/* A time (ns since the epoch): None or 0 is no field, else an int in [0, 2**64). */
static int
read_time(PyObject *obj, uint64_t *out)
{
    if (obj == Py_None) {
        *out = 0;
        return OK;
    }
    return read_u64(obj, out);
}

/* The span's own SpanContext: its ids. */
static int
read_context(PyObject *ctx, uint64_t *trace_high, uint64_t *trace_low, uint64_t *span_id)
{
    if (Py_TYPE(ctx) != (PyTypeObject *)span_context_type || PyTuple_GET_SIZE(ctx) < 6) {
        return NOT_HANDLED;
    }
    int rc = read_u128(PyTuple_GET_ITEM(ctx, 0), trace_high, trace_low);
    if (rc != OK) {
        return rc;
    }
    return read_u64(PyTuple_GET_ITEM(ctx, 1), span_id);
}

/* The members of a trace state (a new reference to a plain dict, or NULL for the default,
   empty one) and the length of its "key=value,..." text. */
static int
read_trace_state(PyObject *state, PyObject **members, Py_ssize_t *text_len)
{
    *members = NULL;
    *text_len = 0;
    if (state == default_trace_state) {
        return OK;
    }
    Py_ssize_t i;
    for (i = 0; i < n_state_types; i++) {
        if ((PyObject *)Py_TYPE(state) == state_types[i]) {
            break;
        }
    }
    if (i == n_state_types) {
        return NOT_HANDLED;
    }
    PyObject *found = PyObject_GetAttr(state, state_fields[i]);
    if (found == NULL) {
        PyErr_Clear();
        return NOT_HANDLED;
    }
    if (!PyDict_CheckExact(found)) {
        Py_DECREF(found);
        return NOT_HANDLED;
    }
    Py_ssize_t pos = 0, n = 0, total = 0;
    PyObject *key, *value;
    while (PyDict_Next(found, &pos, &key, &value)) {
        const char *data;
        Py_ssize_t key_len, value_len;
        int rc = read_utf8(key, &data, &key_len);
        if (rc == OK) {
            rc = read_utf8(value, &data, &value_len);
        }
        if (rc != OK) {
            Py_DECREF(found);
            return rc;
        }
        total += (n ? 1 : 0) + key_len + 1 + value_len; /* [","] key "=" value */
        n++;
    }
    *members = found;
    *text_len = total;
    return OK;
}

/* Appends the trace state field ("key=value" joined by ","), text_len as read_trace_state
   found it (no Python code runs between the two: the members are the same). */
static int
put_trace_state(Buf *buf, PyObject *members, Py_ssize_t text_len)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    int first = 1;
    if (buf_reserve(buf, 1 + varint_size((uint64_t)text_len)) < 0) {
        return FAILED;
    }
    put_byte(buf, T_SPAN_TRACE_STATE);
    put_varint(buf, (uint64_t)text_len);
    while (PyDict_Next(members, &pos, &key, &value)) {
        const char *key_data, *value_data;
        Py_ssize_t key_len, value_len;
        if (read_utf8(key, &key_data, &key_len) != OK || read_utf8(value, &value_data, &value_len) != OK
            || buf_reserve(buf, key_len + value_len + 2) < 0) {
            return FAILED; /* not after read_trace_state read them: no memory */
        }
        if (!first) {
            put_byte(buf, ',');
        }
        first = 0;
        put_bytes(buf, key_data, key_len);
        put_byte(buf, '=');
        put_bytes(buf, value_data, value_len);
    }
    return OK;
}

/* Appends the span's attribute fields (repeated KeyValue) for a plain dict. */
static int
put_attributes(Buf *buf, PyObject *attributes)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        const char *key_data, *str_data = NULL;
        Py_ssize_t key_len, str_len = 0, any_len;
        uint64_t int_value = 0;
        int rc = read_utf8(key, &key_data, &key_len);
        if (rc != OK) {
            return rc;
        }
        PyTypeObject *type = Py_TYPE(value);
        if (type == &PyUnicode_Type) {
            rc = read_utf8(value, &str_data, &str_len);
            if (rc != OK) {
                return rc;
            }
            any_len = 1 + varint_size((uint64_t)str_len) + str_len;
        }
        else if (type == &PyBool_Type) {
            any_len = 2;
        }
        else if (type == &PyLong_Type) {
            int overflow;
            long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow) {
                continue; /* outside int64: skipped, as the SDK (and the Python way) skip it */
            }
            if (n == -1 && PyErr_Occurred()) {
                return FAILED;
            }
            int_value = (uint64_t)n; /* two's complement, as protobuf's int64 */
            any_len = 1 + varint_size(int_value);
        }
        else if (type == &PyFloat_Type) {
            any_len = 9;
        }
        else {
            return NOT_HANDLED;
        }
        /* An empty key is left out, as protobuf leaves out a field at its default. */
        Py_ssize_t key_field = key_len ? 1 + varint_size((uint64_t)key_len) + key_len : 0;
        Py_ssize_t kv_len = key_field + 1 + varint_size((uint64_t)any_len) + any_len;
        if (buf_reserve(buf, 1 + varint_size((uint64_t)kv_len) + kv_len) < 0) {
            return FAILED;
        }
        put_byte(buf, T_SPAN_ATTRIBUTES);
        put_varint(buf, (uint64_t)kv_len);
        if (key_len) {
            put_byte(buf, T_KV_KEY);
            put_varint(buf, (uint64_t)key_len);
            put_bytes(buf, key_data, key_len);
        }
        put_byte(buf, T_KV_VALUE);
        put_varint(buf, (uint64_t)any_len);
        if (type == &PyUnicode_Type) {
            put_byte(buf, T_ANY_STRING);
            put_varint(buf, (uint64_t)str_len);
            put_bytes(buf, str_data, str_len);
        }
        else if (type == &PyBool_Type) {
            put_byte(buf, T_ANY_BOOL);
            put_byte(buf, value == Py_True ? 1 : 0);
        }
        else if (type == &PyLong_Type) {
            put_byte(buf, T_ANY_INT);
            put_varint(buf, int_value);
        }
        else {
            put_byte(buf, T_ANY_DOUBLE);
            /* As struct.pack("<d"): the same function, little-endian. */
            if (PyFloat_Pack8(PyFloat_AS_DOUBLE(value), (char *)buf->data + buf->len, 1) < 0) {
                return FAILED;
            }
            buf->len += 8;
        }
    }
    return OK;
}

/* Appends the status field of a set (not the shared UNSET) status. */
static int
put_status(Buf *buf, PyObject *status)
{
    if (Py_TYPE(status) != (PyTypeObject *)status_type) {
        return NOT_HANDLED;
    }
    int rc = NOT_HANDLED;
    const char *message = NULL;
    Py_ssize_t message_len = 0;
    uint64_t code = 0;
    PyObject *description = PyObject_GetAttr(status, s_description);
    PyObject *status_code = description == NULL ? NULL : PyObject_GetAttr(status, s_status_code);
    if (status_code == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            rc = FAILED; /* KeyboardInterrupt (a signal's, in the properties' Python code): the app's */
            goto done;
        }
        PyErr_Clear(); /* the Python way meets it again, and its caller says so */
        goto done;
    }
    if (description != Py_None) {
        rc = read_utf8(description, &message, &message_len);
        if (rc != OK) {
            goto done;
        }
        rc = NOT_HANDLED;
    }
    Py_ssize_t i;
    for (i = 0; i < n_codes; i++) {
        if (code_members[i] == status_code) {
            code = code_values[i];
            break;
        }
    }
    if (i == n_codes) {
        goto done;
    }
    Py_ssize_t body_len = 0;
    if (message_len) {
        body_len += 1 + varint_size((uint64_t)message_len) + message_len;
    }
    if (code) {
        body_len += 1 + varint_size(code);
    }
    if (buf_reserve(buf, 1 + varint_size((uint64_t)body_len) + body_len) < 0) {
        rc = FAILED;
        goto done;
    }
    put_byte(buf, T_SPAN_STATUS);
    put_varint(buf, (uint64_t)body_len);
    if (message_len) {
        put_byte(buf, T_STATUS_MESSAGE);
        put_varint(buf, (uint64_t)message_len);
        put_bytes(buf, message, message_len);
    }
    if (code) {
        put_byte(buf, T_STATUS_CODE);
        put_varint(buf, code);
    }
    rc = OK;
done:
    Py_XDECREF(description);
    Py_XDECREF(status_code);
    return rc;
}

/* The fields of a light span the encoder reads (new references). */
typedef struct {
    PyObject *context, *parent, *name, *kind, *start, *end, *attributes, *events, *links, *status;
    PyObject *trace_state_members; /* a plain dict, or NULL: no trace state */
} SpanState;

static void
state_clear(SpanState *state)
{
    Py_CLEAR(state->context);
    Py_CLEAR(state->parent);
    Py_CLEAR(state->name);
    Py_CLEAR(state->kind);
    Py_CLEAR(state->start);
    Py_CLEAR(state->end);
    Py_CLEAR(state->attributes);
    Py_CLEAR(state->events);
    Py_CLEAR(state->links);
    Py_CLEAR(state->status);
    Py_CLEAR(state->trace_state_members);
}

/* The span's fields the encoder reads, in this order (light_offsets too); the last two
   (resource, scope) are read by light_end alone. */
static PyObject **span_field_names[N_SPAN_FIELDS] = {
    &s_context, &s_parent, &s_name, &s_kind, &s_start_time, &s_end_time,
    &s_attributes, &s_events, &s_links, &s_status, &s_resource, &s_scope,
};

/* Field i of span (a new reference), or NULL: NOT_HANDLED in *rc when it is missing,
   FAILED when reading it failed. */
static PyObject *
span_field(PyObject *span, int i, int *rc)
{
    if (Py_TYPE(span) == light_type) {
        PyObject *value = *(PyObject **)((char *)span + light_offsets[i]);
        if (value == NULL) {
            *rc = NOT_HANDLED; /* an unset slot */
            return NULL;
        }
        return Py_NewRef(value);
    }
    PyObject *value = PyObject_GetAttr(span, *span_field_names[i]);
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            *rc = NOT_HANDLED;
        }
        else {
            *rc = FAILED;
        }
    }
    return value;
}

/* Reads the span's fields; a missing one is not handled here. */
static int
state_read(PyObject *span, SpanState *state)
{
    PyObject **fields[] = {
        &state->context, &state->parent, &state->name, &state->kind, &state->start,
        &state->end, &state->attributes, &state->events, &state->links, &state->status,
    };
    for (int i = 0; i < (int)(sizeof(fields) / sizeof(fields[0])); i++) {
        int rc = OK;
        *fields[i] = span_field(span, i, &rc);
        if (*fields[i] == NULL) {
            return rc;
        }
    }
    return OK;
}

/* The encoding of a light span's common case: bytes, None (not handled), or NULL (error). */
static PyObject *
encode_common(PyObject *span)
{
    SpanState state = {0};
    Buf buf;
    buf_init(&buf);
    PyObject *result = NULL;
    uint64_t trace_high, trace_low, span_id, parent_id = 0, start, end;
    int remote = 0, rc;

    if (span_context_type == NULL) {
        rc = NOT_HANDLED; /* not configured */
        goto done;
    }
    rc = state_read(span, &state);
    if (rc != OK) {
        goto done;
    }
    rc = NOT_HANDLED;
    /* Events and links: the empty tuple a light span starts with, else the Python way. */
    if (!PyTuple_CheckExact(state.events) || PyTuple_GET_SIZE(state.events) != 0
        || !PyTuple_CheckExact(state.links) || PyTuple_GET_SIZE(state.links) != 0) {
        goto done;
    }
    if (!PyDict_CheckExact(state.attributes)) {
        goto done; /* the SDK's BoundedAttributes, once the app set one */
    }
    Py_ssize_t kind;
    for (kind = 0; kind < n_kinds; kind++) {
        if (kind_members[kind] == state.kind) {
            break;
        }
    }
    if (kind == n_kinds) {
        goto done;
    }
    if ((rc = read_context(state.context, &trace_high, &trace_low, &span_id)) != OK) {
        goto done;
    }
    Py_ssize_t trace_state_len;
    rc = read_trace_state(PyTuple_GET_ITEM(state.context, 4), &state.trace_state_members, &trace_state_len);
    if (rc != OK) {
        goto done;
    }
    if (state.parent != Py_None) {
        /* Only its span id and whether it is remote are encoded. */
        if (Py_TYPE(state.parent) != (PyTypeObject *)span_context_type || PyTuple_GET_SIZE(state.parent) < 6) {
            goto done;
        }
        if ((rc = read_u64(PyTuple_GET_ITEM(state.parent, 1), &parent_id)) != OK) {
            goto done;
        }
        rc = NOT_HANDLED;
        PyObject *is_remote = PyTuple_GET_ITEM(state.parent, 2);
        if (is_remote != Py_True && is_remote != Py_False) {
            goto done;
        }
        remote = is_remote == Py_True;
    }
    if ((rc = read_time(state.start, &start)) != OK || (rc = read_time(state.end, &end)) != OK) {
        goto done;
    }
    const char *name = NULL;
    Py_ssize_t name_len = 0;
    if (state.name != Py_None) {
        if ((rc = read_utf8(state.name, &name, &name_len)) != OK) {
            goto done;
        }
    }
    /* The head: ids (28), parent (10), name, kind (at most 4), times (18); the trace state
       reserves its own room. */
    if (buf_reserve(&buf, 80 + name_len) < 0) {
        rc = FAILED;
        goto done;
    }
    put_byte(&buf, T_SPAN_TRACE_ID);
    put_byte(&buf, 16);
    put_be64(&buf, trace_high);
    put_be64(&buf, trace_low);
    put_byte(&buf, T_SPAN_SPAN_ID);
    put_byte(&buf, 8);
    put_be64(&buf, span_id);
    if (state.trace_state_members != NULL && trace_state_len) {
        if ((rc = put_trace_state(&buf, state.trace_state_members, trace_state_len)) != OK
            || (rc = buf_reserve(&buf, 80 + name_len)) != OK) { /* room again for the rest */
            rc = FAILED;
            goto done;
        }
    }
    if (state.parent != Py_None) {
        put_byte(&buf, T_SPAN_PARENT_SPAN_ID);
        put_byte(&buf, 8);
        put_be64(&buf, parent_id);
    }
    if (name_len) {
        put_byte(&buf, T_SPAN_NAME);
        put_varint(&buf, (uint64_t)name_len);
        put_bytes(&buf, name, name_len);
    }
    put_bytes(&buf, kind_field[kind], kind_field_len[kind]);
    if (start) {
        put_byte(&buf, T_SPAN_START);
        put_fixed64(&buf, start);
    }
    if (end) {
        put_byte(&buf, T_SPAN_END);
        put_fixed64(&buf, end);
    }
    if ((rc = put_attributes(&buf, state.attributes)) != OK) {
        goto done;
    }
    if (state.status == unset_status) {
        if (buf_reserve(&buf, 2) < 0) {
            rc = FAILED;
            goto done;
        }
        put_byte(&buf, T_SPAN_STATUS);
        put_byte(&buf, 0);
    }
    else if ((rc = put_status(&buf, state.status)) != OK) {
        goto done;
    }
    if (buf_reserve(&buf, 6) < 0) {
        rc = FAILED;
        goto done;
    }
    put_varint(&buf, T_SPAN_FLAGS);
    put_fixed32(&buf, remote ? FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE : FLAG_HAS_IS_REMOTE);

    /* The ScopeSpans.spans field around the Span message. */
    Py_ssize_t head = 1 + varint_size((uint64_t)buf.len);
    result = PyBytes_FromStringAndSize(NULL, head + buf.len);
    if (result == NULL) {
        rc = FAILED;
        goto done;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    *out++ = T_SS_SPANS;
    for (uint64_t n = (uint64_t)buf.len; ; n >>= 7) {
        if (n < 0x80) {
            *out++ = (unsigned char)n;
            break;
        }
        *out++ = (unsigned char)((n & 0x7F) | 0x80);
    }
    memcpy(out, buf.data, (size_t)buf.len);
    rc = OK;
done:
    buf_free(&buf);
    state_clear(&state);
    if (result != NULL) {
        return result; /* made last, when everything went well */
    }
    if (rc == FAILED || PyErr_Occurred()) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_SystemError, "autotrace._speedups: encoding failed");
        }
        return NULL;
    }
    Py_RETURN_NONE; /* not handled: whatever the step that stopped said */
}

/* encode_common, else the Python way. */
static PyObject *
encode_or_fallback(PyObject *span)
{
    PyObject *data = encode_common(span);
    if (data != Py_None) {
        return data; /* bytes, or NULL with an error set */
    }
    Py_DECREF(data);
    if (fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "autotrace._speedups is not configured");
        return NULL;
    }
    return PyObject_CallOneArg(fallback, span);
}

/* -- module functions ------------------------------------------------------------------ */

PyDoc_STRVAR(encode_light_doc,
"encode_light(span) -> bytes\n\n"
"The light span's ScopeSpans.spans field: in C for the common case, else from the\n"
"Python fallback given to configure().");

static PyObject *
sp_encode_light(PyObject *module, PyObject *span)
{
    return encode_or_fallback(span);
}

PyDoc_STRVAR(encode_light_common_doc,
"encode_light_common(span) -> bytes | None\n\n"
"The C encoding alone: None when the span is not the common case (for the tests).");

static PyObject *
sp_encode_light_common(PyObject *module, PyObject *span)
{
    return encode_common(span);
}

/* What light_end leaves to the processor's Python method _light_end_rest(span, outcome, exc). */
#define REST_NOT_HANDLED -1 /* the Python light_end does it all */
#define REST_FAILED -2      /* exc: the encoding (or the queue) failed; the span is lost */
#define REST_FULL 2         /* the queue was full: the drop is counted */
#define REST_WAKE 3         /* queued, and a batch is ready: the export thread is woken */

/* -- the processor's queue state (span_queue.EncodingBatchProcessor._state) ---------------- */

/* What the light end needs of the processor, read once (no attribute look-up per span):
   its deque and the deque's append, its lock (replaced after a fork), its bounds (fixed
   at construction), the byte count and the shutdown flag (shared with the Python code
   through the processor's properties), and whether a ready batch was signalled since the
   export thread last took one (so a slow export thread costs one Python call per batch,
   not one per span). */
typedef struct {
    PyObject_HEAD
    PyObject *rest;   /* the processor's _light_end_rest (a bound method) */
    PyObject *queue;  /* its deque of (resource, scope, bytes) */
    PyObject *append; /* queue.append */
    PyObject *lock;   /* its lock */
    Py_ssize_t bytes;
    Py_ssize_t max_queue_size, max_queue_bytes, max_batch_size, max_batch_bytes;
    char shutdown;
    char woken;
} QueueState;

/* The lock class last seen and its acquire and release (method descriptors), called
   directly for a lock of that class; any other lock through its methods. */
static PyTypeObject *q_lock_type;
static PyObject *q_acquire, *q_release;

static PyObject *
q_lock_call(PyObject *lock, int acquire)
{
    if (Py_TYPE(lock) != q_lock_type) {
        PyObject *cls = (PyObject *)Py_TYPE(lock);
        PyObject *a = PyObject_GetAttr(cls, s_acquire);
        PyObject *r = a == NULL ? NULL : PyObject_GetAttr(cls, s_release);
        if (r == NULL) {
            PyErr_Clear(); /* the call below raises the lock's own error */
        }
        else if (Py_IS_TYPE(a, &PyMethodDescr_Type) && Py_IS_TYPE(r, &PyMethodDescr_Type)) {
            Py_XSETREF(q_lock_type, (PyTypeObject *)Py_NewRef(cls));
            Py_XSETREF(q_acquire, Py_NewRef(a));
            Py_XSETREF(q_release, Py_NewRef(r));
        }
        Py_XDECREF(a);
        Py_XDECREF(r);
        if (Py_TYPE(lock) != q_lock_type) {
            return PyObject_CallMethodNoArgs(lock, acquire ? s_acquire : s_release);
        }
    }
    return PyObject_Vectorcall(acquire ? q_acquire : q_release, &lock, 1, NULL);
}

/* The queue append of EncodingBatchProcessor._put under the processor's lock: 1 (queued),
   REST_FULL, REST_WAKE, or -1 with an error set. */
static int
queue_put(QueueState *q, PyObject *resource, PyObject *scope, PyObject *data)
{
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    /* Made before the lock is taken: the allocation may start a garbage collection, whose
       finalizers may end a span on this thread and so come back here (the lock is not
       re-entrant). Nothing under the lock runs Python code (the deque's append is C). */
    PyObject *entry = PyTuple_Pack(3, resource, scope, data);
    if (entry == NULL) {
        return -1;
    }
    PyObject *lock = Py_NewRef(q->lock);
    PyObject *acquired = q_lock_call(lock, 1); /* may wait, the GIL released */
    if (acquired == NULL) {
        Py_DECREF(lock);
        Py_DECREF(entry);
        return -1;
    }
    Py_DECREF(acquired);
    int outcome;
    Py_ssize_t queued = PyObject_Size(q->queue);
    if (queued < 0) {
        outcome = -1;
    }
    else if (queued >= q->max_queue_size || q->bytes > q->max_queue_bytes - size) {
        outcome = REST_FULL;
    }
    else {
        PyObject *appended = PyObject_CallOneArg(q->append, entry);
        if (appended == NULL) {
            outcome = -1;
        }
        else {
            Py_DECREF(appended);
            q->bytes += size;
            outcome = 1;
            if ((queued + 1 >= q->max_batch_size || q->bytes >= q->max_batch_bytes) && !q->woken) {
                q->woken = 1;
                outcome = REST_WAKE;
            }
        }
    }
    /* Released whatever happened; an error set above is kept across the call. */
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *released = q_lock_call(lock, 0);
    Py_DECREF(lock);
    if (released == NULL) {
        if (exc_type != NULL) {
            PyErr_Clear(); /* the first error is the one reported */
        }
        else {
            outcome = -1;
        }
    }
    Py_XDECREF(released);
    if (exc_type != NULL) {
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    Py_DECREF(entry); /* after the lock: a dropped entry is freed here */
    return outcome;
}

/* processor._light_end_rest(span, outcome, exc). */
static PyObject *
call_rest(QueueState *q, PyObject *span, long outcome, PyObject *exc)
{
    PyObject *code = PyLong_FromLong(outcome);
    if (code == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallFunctionObjArgs(q->rest, span, code, exc == NULL ? Py_None : exc, NULL);
    Py_DECREF(code);
    return result;
}

/* The current exception, normalized (a new reference), the error indicator cleared. */
static PyObject *
take_exception(void)
{
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyErr_NormalizeException(&exc_type, &exc_value, &exc_tb);
    Py_XDECREF(exc_type);
    Py_XDECREF(exc_tb);
    if (exc_value == NULL) {
        exc_value = Py_NewRef(Py_None);
    }
    return exc_value;
}

PyDoc_STRVAR(queue_light_end_doc,
"light_end(span) -> None\n\n"
"EncodingBatchProcessor.light_end and _put in one call: the sampled check, the encoding,\n"
"the queue append under the processor's lock with its span and byte bounds. What it\n"
"does not do itself (a span it does not encode, a full queue, a ready batch, an error)\n"
"it hands to the processor's _light_end_rest(span, outcome, exc).");

static PyObject *
queue_light_end(QueueState *q, PyObject *span)
{
    int rc = OK;
    PyObject *context = span_field(span, 0, &rc);
    long flags = -1;
    if (context != NULL && Py_TYPE(context) == (PyTypeObject *)span_context_type
        && PyTuple_GET_SIZE(context) >= 6 && PyLong_Check(PyTuple_GET_ITEM(context, 3))) {
        flags = PyLong_AsLong(PyTuple_GET_ITEM(context, 3)); /* TraceFlags, an int subclass */
    }
    Py_XDECREF(context);
    if (flags == -1) {
        PyErr_Clear();
        return call_rest(q, span, REST_NOT_HANDLED, NULL);
    }
    if (!(flags & 1) || q->shutdown) {
        Py_RETURN_NONE; /* not sampled, or shut down */
    }
    PyObject *data = encode_common(span);
    if (data == Py_None) {
        Py_DECREF(data);
        return call_rest(q, span, REST_NOT_HANDLED, NULL);
    }
    int outcome = -1;
    if (data != NULL) {
        rc = OK;
        PyObject *resource = span_field(span, 10, &rc);
        PyObject *scope = resource == NULL ? NULL : span_field(span, 11, &rc);
        if (scope == NULL && rc == NOT_HANDLED) {
            PyErr_SetString(PyExc_AttributeError, "the span has no resource or instrumentation scope");
        }
        outcome = scope == NULL ? -1 : queue_put(q, resource, scope, data);
        Py_XDECREF(resource);
        Py_XDECREF(scope);
        Py_DECREF(data);
    }
    if (outcome == 1) {
        Py_RETURN_NONE;
    }
    if (outcome < 0) {
        if (!PyErr_Occurred()) { /* never None as the exception _light_end_rest re-raises */
            PyErr_SetString(PyExc_SystemError, "autotrace._speedups: the queue append failed");
        }
        PyObject *exc = take_exception();
        PyObject *result = call_rest(q, span, REST_FAILED, exc);
        Py_DECREF(exc);
        return result;
    }
    return call_rest(q, span, outcome, NULL);
}

/* A bound: a non-negative int, one past PY_SSIZE_T_MAX as PY_SSIZE_T_MAX (no queue reaches it). */
static int
queue_bound(PyObject *value, Py_ssize_t *out)
{
    int overflow = 0;
    long long n = PyLong_Check(value) ? PyLong_AsLongLongAndOverflow(value, &overflow) : -1;
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow > 0 || n > PY_SSIZE_T_MAX) {
        *out = PY_SSIZE_T_MAX;
        return 0;
    }
    if (n < 0 || overflow < 0) {
        PyErr_Format(PyExc_ValueError, "a queue bound must be a non-negative int, not %R", value);
        return -1;
    }
    *out = (Py_ssize_t)n;
    return 0;
}

static PyObject *
queue_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *rest, *queue, *lock, *bounds[4];
    if (!PyArg_ParseTuple(args, "OOOOOOO:QueueState", &rest, &queue, &lock, &bounds[0], &bounds[1], &bounds[2],
                          &bounds[3])) {
        return NULL;
    }
    Py_ssize_t values[4];
    for (int i = 0; i < 4; i++) {
        if (queue_bound(bounds[i], &values[i]) < 0) {
            return NULL;
        }
    }
    PyObject *append = PyObject_GetAttr(queue, s_append);
    if (append == NULL) {
        return NULL;
    }
    QueueState *q = (QueueState *)type->tp_alloc(type, 0);
    if (q == NULL) {
        Py_DECREF(append);
        return NULL;
    }
    q->rest = Py_NewRef(rest);
    q->queue = Py_NewRef(queue);
    q->append = append;
    q->lock = Py_NewRef(lock);
    q->max_queue_size = values[0];
    q->max_queue_bytes = values[1];
    q->max_batch_size = values[2];
    q->max_batch_bytes = values[3];
    return (PyObject *)q;
}

static int
queue_traverse(QueueState *q, visitproc visit, void *arg)
{
    Py_VISIT(q->rest);
    Py_VISIT(q->queue);
    Py_VISIT(q->append);
    Py_VISIT(q->lock);
    return 0;
}

static int
queue_clear(QueueState *q)
{
    Py_CLEAR(q->rest);
    Py_CLEAR(q->queue);
    Py_CLEAR(q->append);
    Py_CLEAR(q->lock);
    return 0;
}

static void
queue_dealloc(QueueState *q)
{
    PyObject_GC_UnTrack(q);
    queue_clear(q);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

static PyObject *
queue_get_lock(QueueState *q, void *closure)
{
    return Py_NewRef(q->lock == NULL ? Py_None : q->lock);
}

static int
queue_set_lock(QueueState *q, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the lock cannot be deleted");
        return -1;
    }
    Py_XSETREF(q->lock, Py_NewRef(value));
    return 0;
}

static PyMethodDef queue_methods[] = {
    {"light_end", (PyCFunction)queue_light_end, METH_O, queue_light_end_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef queue_members[] = {
    {"bytes", Py_T_PYSSIZET, offsetof(QueueState, bytes), 0, "the encoded size of what the queue holds"},
    {"shutdown", Py_T_BOOL, offsetof(QueueState, shutdown), 0, "the processor is shut down"},
    {"woken", Py_T_BOOL, offsetof(QueueState, woken), 0, "a ready batch was signalled since the last take"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef queue_getset[] = {
    {"lock", (getter)queue_get_lock, (setter)queue_set_lock, "the processor's lock", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject QueueStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "autotrace._speedups.QueueState",
    .tp_basicsize = sizeof(QueueState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "QueueState(rest, queue, lock, max_queue_size, max_queue_bytes, max_batch_size, max_batch_bytes):\n"
              "an EncodingBatchProcessor's queue as its compiled light end reads it.",
    .tp_new = queue_new,
    .tp_traverse = (traverseproc)queue_traverse,
    .tp_clear = (inquiry)queue_clear,
    .tp_dealloc = (destructor)queue_dealloc,
    .tp_methods = queue_methods,
    .tp_members = queue_members,
    .tp_getset = queue_getset,
};

PyDoc_STRVAR(join_spans_doc,
"join_spans(entries, resource, scope) -> bytes | None\n\n"
"The encoded spans of a batch (a list of (resource, scope, bytes)) joined, when every entry\n"
"has exactly these resource and scope objects (the usual batch: one group); else None.");

static PyObject *
sp_join_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "join_spans(entries: list, resource, scope)");
        return NULL;
    }
    PyObject *entries = args[0], *resource = args[1], *scope = args[2];
    Py_ssize_t n = PyList_GET_SIZE(entries), total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyList_GET_ITEM(entries, i);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3 || PyTuple_GET_ITEM(entry, 0) != resource
            || PyTuple_GET_ITEM(entry, 1) != scope || !PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 2))) {
            Py_RETURN_NONE;
        }
        Py_ssize_t size = PyBytes_GET_SIZE(PyTuple_GET_ITEM(entry, 2));
        if (size > PY_SSIZE_T_MAX - total) {
            Py_RETURN_NONE;
        }
        total += size;
    }
    /* No Python code runs below: the list cannot change under the copy. */
    PyObject *joined = PyBytes_FromStringAndSize(NULL, total);
    if (joined == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(joined);
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(entries); i++) {
        PyObject *data = PyTuple_GET_ITEM(PyList_GET_ITEM(entries, i), 2);
        memcpy(out, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
        out += PyBytes_GET_SIZE(data);
    }
    return joined;
}

/* The ends of light spans counted for sdk._EndCounter (what flush_if_recorded reads). */
static unsigned long long ends_counted;

PyDoc_STRVAR(count_end_doc, "count_end(span) -> None: one more span ended (see ended()).");

static PyObject *
sp_count_end(PyObject *module, PyObject *span)
{
    ends_counted++;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(ended_doc, "ended() -> int: how many times count_end was called in this process.");

static PyObject *
sp_ended(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(ends_counted);
}

PyDoc_STRVAR(register_light_class_doc,
"register_light_class(cls) -> bool\n\n"
"The light span class, whose instances' slots the encoder then reads directly (their\n"
"offsets from the class's member descriptors). False, and nothing registered, when a\n"
"field is not an object slot of that class.");

/* The offset of `cls`'s object slot `name` (the class's own attribute: the member
 * descriptor of the slot) in *offset: 1; 0, no error set, when `name` is not one. */
static int
slot_offset(PyObject *cls, PyObject *name, Py_ssize_t *offset)
{
    PyObject *descr = PyObject_GetAttr(cls, name);
    if (descr == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type)
             && ((PyMemberDescrObject *)descr)->d_common.d_type == (PyTypeObject *)cls
             && ((PyMemberDescrObject *)descr)->d_member->type == Py_T_OBJECT_EX;
    if (ok) {
        *offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    Py_DECREF(descr);
    return ok;
}

static PyObject *
sp_register_light_class(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "register_light_class(cls): a class");
        return NULL;
    }
    Py_ssize_t offsets[N_SPAN_FIELDS];
    for (int i = 0; i < N_SPAN_FIELDS; i++) {
        if (!slot_offset(cls, *span_field_names[i], &offsets[i])) {
            Py_RETURN_FALSE;
        }
    }
    memcpy(light_offsets, offsets, sizeof(offsets));
    Py_INCREF(cls);
    Py_XSETREF(light_type, (PyTypeObject *)cls);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(configure_doc,
"configure(span_context_type, default_trace_state, unset_status, status_type, kinds, codes, fallback,\n"
"          trace_states)\n\n"
"kinds: ((SpanKind member, encoded Span.kind field), ...); codes: ((StatusCode member, value), ...);\n"
"trace_states: ((trace state class, name of its members' plain dict), ...);\n"
"fallback: the Python encoder, called for what the C code does not handle.");

static PyObject *
sp_configure(PyObject *module, PyObject *args)
{
    PyObject *ctx_type, *trace_state, *unset, *st_type, *kinds, *codes, *fall, *states;
    if (!PyArg_ParseTuple(args, "O!OOO!O!O!OO!:configure", &PyType_Type, &ctx_type, &trace_state, &unset,
                          &PyType_Type, &st_type, &PyTuple_Type, &kinds, &PyTuple_Type, &codes, &fall,
                          &PyTuple_Type, &states)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)ctx_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "span_context_type must be a tuple subclass");
        return NULL;
    }
    if (!PyCallable_Check(fall)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return NULL;
    }
    if (PyTuple_GET_SIZE(kinds) > MAX_KINDS || PyTuple_GET_SIZE(codes) > MAX_CODES
        || PyTuple_GET_SIZE(states) > MAX_STATE_TYPES) {
        PyErr_SetString(PyExc_ValueError, "too many kinds or status codes");
        return NULL;
    }
    /* Checked whole before anything is kept. */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kinds); i++) {
        PyObject *pair = PyTuple_GET_ITEM(kinds, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))
            || PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1)) > 4) {
            PyErr_SetString(PyExc_TypeError, "kinds: ((member, bytes of at most 4), ...)");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(states); i++) {
        PyObject *pair = PyTuple_GET_ITEM(states, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyType_Check(PyTuple_GET_ITEM(pair, 0))
            || !PyUnicode_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "trace_states: ((class, str), ...)");
            return NULL;
        }
    }
    uint64_t values[MAX_CODES];
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(codes); i++) {
        PyObject *pair = PyTuple_GET_ITEM(codes, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyLong_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "codes: ((member, int), ...)");
            return NULL;
        }
        values[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(pair, 1));
        if (values[i] == (uint64_t)-1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    /* Kept for the life of the process (replaced by a later call). */
    Py_INCREF(ctx_type);
    Py_XSETREF(span_context_type, ctx_type);
    Py_INCREF(trace_state);
    Py_XSETREF(default_trace_state, trace_state);
    Py_INCREF(unset);
    Py_XSETREF(unset_status, unset);
    Py_INCREF(st_type);
    Py_XSETREF(status_type, st_type);
    Py_INCREF(fall);
    Py_XSETREF(fallback, fall);
    for (Py_ssize_t i = 0; i < n_kinds; i++) {
        Py_CLEAR(kind_members[i]);
    }
    n_kinds = PyTuple_GET_SIZE(kinds);
    for (Py_ssize_t i = 0; i < n_kinds; i++) {
        PyObject *pair = PyTuple_GET_ITEM(kinds, i);
        kind_members[i] = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        kind_field_len[i] = PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1));
        memcpy(kind_field[i], PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 1)), (size_t)kind_field_len[i]);
    }
    for (Py_ssize_t i = 0; i < n_codes; i++) {
        Py_CLEAR(code_members[i]);
    }
    n_codes = PyTuple_GET_SIZE(codes);
    for (Py_ssize_t i = 0; i < n_codes; i++) {
        code_members[i] = Py_NewRef(PyTuple_GET_ITEM(PyTuple_GET_ITEM(codes, i), 0));
        code_values[i] = values[i];
    }
    for (Py_ssize_t i = 0; i < n_state_types; i++) {
        Py_CLEAR(state_types[i]);
        Py_CLEAR(state_fields[i]);
    }
    n_state_types = PyTuple_GET_SIZE(states);
    for (Py_ssize_t i = 0; i < n_state_types; i++) {
        state_types[i] = Py_NewRef(PyTuple_GET_ITEM(PyTuple_GET_ITEM(states, i), 0));
        state_fields[i] = Py_NewRef(PyTuple_GET_ITEM(PyTuple_GET_ITEM(states, i), 1));
    }
    Py_RETURN_NONE;
}

/* -- the light span's start, context and end (autotrace/light_span.py is the reference) -- */

/* LightSpan's slots, in this order (register_light_start checks each is an object slot). */
enum {
    L_NAME, L_CONTEXT, L_KIND, L_INFO, L_SCOPE, L_PARENT, L_START, L_END, L_ATTRIBUTES, L_EVENTS,
    L_LINKS, L_RESOURCE, L_STATUS, L_PROCESSOR, L_LIMITS, L_LOCK, L_METRICS, L_PID, L_PLAN, N_LIGHT_SLOTS
};
static Py_ssize_t slot_offsets[N_LIGHT_SLOTS];
static PyTypeObject *start_type; /* LightSpan, once register_light_start accepted it */

/* What register_light_start was given (owned references). */
static PyObject *start_plans;     /* dict: tracer -> plan tuple (see PLAN_* below), light_span's */
static PyObject *start_api_dict;  /* autotrace.api's globals: its SPAN_KEY (None until the API is loaded) */
static PyObject *start_with_span_py; /* autotrace.api's Python with_span (the reference) */
static PyObject *start_decision_key; /* the agent's upstream sampling decision key */
static PyObject *start_span_types; /* tuple of the span classes whose _context is their SpanContext */
static PyObject *start_flags;     /* tuple: TraceFlags(0..3) */
static PyObject *start_bits;      /* random.getrandbits */
static int bits_are_getrandbits;  /* start_bits is a Random's getrandbits (its ids < 2**bits) */
static PyObject *start_lock;      /* threading.Lock (the factory light_span uses) */
static PyObject *start_queue_dict; /* autotrace.span_queue's globals (its "pid") */
static PyObject *start_sdk_dict;  /* autotrace.sdk's globals (its "_app_provider") */
static PyObject *start_context_type; /* opentelemetry.context.Context */
static PyObject *start_end_py;    /* LightSpan's Python end (the reference) */
static PyObject *empty_tuple, *int_64, *int_128, *trace_id_max, *span_id_max, *long_zero;
static PyObject *s_tracer_config, *s_is_enabled, *s_span_processors, *s_resource_pub, *s_pid,
    *s_app_provider, *s_after_end, *s_immutable, *s_fast, *s_span_key_name, *s_variable;

/* Module globals the start and close read on every span, each through a cache: before
   3.12, a dict's version tag changes with every change of the dict, so while the module's
   dict has the version it had, the value read then is still the one it holds (borrowed). */
typedef struct {
    PyObject *dict;
    PyObject *value;
    uint64_t version;
} GlobalCache;
enum { G_SPAN_KEY, G_APP, G_PID, G_VARIABLE, G_LOADED, G_RESET, G_SUPPRESS, G_TRACERS, G_DETACH, N_GLOBALS };
static GlobalCache global_cache[N_GLOBALS];

/* dict[name] (borrowed), or NULL: missing, or an error set. */
static inline PyObject *
module_global(int i, PyObject *dict, PyObject *name)
{
#if PY_VERSION_HEX < 0x030C0000
    GlobalCache *cache = &global_cache[i];
    uint64_t version = ((PyDictObject *)dict)->ma_version_tag;
    if (cache->version == version && cache->dict == dict && version != 0) {
        return cache->value;
    }
    PyObject *value = PyDict_GetItemWithError(dict, name);
    cache->dict = dict;
    cache->value = value;
    cache->version = value == NULL ? 0 : version;
    return value;
#else
    return PyDict_GetItemWithError(dict, name);
#endif
}

/* The API's current-span key (borrowed), or NULL: not known (None), or an error set. */
static PyObject *
span_key(void)
{
    PyObject *key = module_global(G_SPAN_KEY, start_api_dict, s_span_key_name);
    return key == Py_None ? NULL : key;
}

/* The plan tuple light_span registers per tracer (its _Plan, read once). */
enum {
    PLAN_PLAN,       /* the _Plan object (the span's _plan) */
    PLAN_PROCESSOR,  /* the tracer's SynchronousMultiSpanProcessor */
    PLAN_KNOWN,      /* its processors' tuple when planned (else planned again: Python) */
    PLAN_LIGHT_ENDS, /* their light ends, in order */
    PLAN_LIMITS,
    PLAN_INFO,
    PLAN_SCOPE,
    PLAN_OUTCOMES,   /* int: (recording, sampled) by parent, 2 bits each: local sampled, local
                        not sampled, remote sampled, remote not sampled; the root's at bits 8-9,
                        bit 10 set when the root's is fixed */
    PLAN_UPSTREAM,   /* bool: the agent's sampler (an upstream B3 decision: Python) */
    PLAN_ROOT_RANDOM, /* bool: the id generator's is_trace_id_random() */
    PLAN_MAX_ATTRIBUTES, /* int, -1 for no limit */
    PLAN_RESOURCE,   /* the tracer's resource */
    N_PLAN
};

/* A new reference to slot i of a light span (NULL when unset). */
static inline PyObject *
slot_get(PyObject *span, int i)
{
    return *(PyObject **)((char *)span + slot_offsets[i]);
}

/* Sets slot i of a light span, taking the reference `value` (the old value dropped). */
static inline void
slot_set(PyObject *span, int i, PyObject *value)
{
    PyObject **slot = (PyObject **)((char *)span + slot_offsets[i]);
    PyObject *old = *slot;
    *slot = value;
    Py_XDECREF(old);
}

/* time.time_ns(): CLOCK_REALTIME, as CPython reads it on POSIX. */
static PyObject *
now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec);
}

/* random.getrandbits(bits) until it is not 0 (the SDK's id generator's loop). */
static PyObject *
random_id(PyObject *bits)
{
    for (;;) {
        PyObject *id = PyObject_CallOneArg(start_bits, bits);
        if (id == NULL) {
            return NULL;
        }
        int nonzero = PyObject_IsTrue(id);
        if (nonzero != 0) {
            if (nonzero < 0) {
                Py_CLEAR(id);
            }
            return id;
        }
        Py_DECREF(id);
    }
}

/* 0 < value <= max (2**bits - 1) for an exact int: 1, 0, or -1 with an error set. */
static int
in_id_range(PyObject *value, PyObject *max, size_t bits)
{
    if (!PyLong_CheckExact(value)) {
        return 0;
    }
#if PY_VERSION_HEX < 0x030E0000
    int sign = _PyLong_Sign(value);
    if (sign <= 0) {
        return 0;
    }
    size_t n = _PyLong_NumBits(value);
    if (n == (size_t)-1 && PyErr_Occurred()) {
        return -1;
    }
    return n <= bits;
#endif
    int above = PyObject_RichCompareBool(value, long_zero, Py_GT);
    if (above <= 0) {
        return above;
    }
    return PyObject_RichCompareBool(value, max, Py_LE);
}

/* Whether every value of a plain dict is an exact str, bool, int or float. */
static int
plain_values(PyObject *attributes)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        PyTypeObject *type = Py_TYPE(value);
        if (type != &PyUnicode_Type && type != &PyBool_Type && type != &PyLong_Type && type != &PyFloat_Type) {
            return 0;
        }
    }
    return 1;
}

#define START_NOT_HANDLED ((PyObject *)1) /* internal: the Python way starts this span */

static PyObject *start_planned(PyObject *plan, PyObject *tracer, PyObject *name, PyObject *kind, PyObject *parent,
                               PyObject *attributes, PyObject *key);

/* light_span.start_span's common case (see start_light's doc): a new LightSpan, NULL with
   an error set, or START_NOT_HANDLED. */
static PyObject *
start_common(PyObject *tracer, PyObject *name, PyObject *kind, PyObject *parent, PyObject *attributes, PyObject *key)
{
    if (start_type == NULL || !PyDict_Check(parent)) {
        return START_NOT_HANDLED;
    }
    PyObject *plan = PyDict_GetItemWithError(start_plans, tracer);
    if (plan == NULL) {
        return PyErr_Occurred() ? NULL : START_NOT_HANDLED;
    }
    if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != N_PLAN) {
        return START_NOT_HANDLED;
    }
    /* Held: Python code run on the way (a collection's finalizers) may replace the entry. */
    Py_INCREF(plan);
    PyObject *result = start_planned(plan, tracer, name, kind, parent, attributes, key);
    Py_DECREF(plan);
    return result;
}

static PyObject *
start_planned(PyObject *plan, PyObject *tracer, PyObject *name, PyObject *kind, PyObject *parent, PyObject *attributes,
              PyObject *key)
{
    /* The checks start_span makes on every span: no app provider, tracer enabled, the
       processors those planned. */
    PyObject *app = module_global(G_APP, start_sdk_dict, s_app_provider);
    if (app != Py_None) {
        return app == NULL && PyErr_Occurred() ? NULL : START_NOT_HANDLED;
    }
    PyObject *config = PyObject_GetAttr(tracer, s_tracer_config);
    PyObject *enabled = config == NULL ? NULL : PyObject_GetAttr(config, s_is_enabled);
    Py_XDECREF(config);
    if (enabled == NULL) {
        PyErr_Clear(); /* the Python way meets it */
        return START_NOT_HANDLED;
    }
    Py_DECREF(enabled); /* compared by identity only */
    if (enabled != Py_True) {
        return START_NOT_HANDLED;
    }
    PyObject *processors = PyObject_GetAttr(PyTuple_GET_ITEM(plan, PLAN_PROCESSOR), s_span_processors);
    if (processors == NULL) {
        PyErr_Clear();
        return START_NOT_HANDLED;
    }
    Py_DECREF(processors);
    if (processors != PyTuple_GET_ITEM(plan, PLAN_KNOWN)) {
        return START_NOT_HANDLED; /* a processor was added: planned again in Python */
    }
    if (PyTuple_GET_ITEM(plan, PLAN_UPSTREAM) == Py_True) {
        PyObject *decision = PyDict_GetItemWithError(parent, start_decision_key);
        if (decision != NULL || PyErr_Occurred()) {
            return decision == NULL ? NULL : START_NOT_HANDLED;
        }
    }
    /* Attributes: none, or a plain dict within the count limit. */
    Py_ssize_t max_attributes = PyLong_AsSsize_t(PyTuple_GET_ITEM(plan, PLAN_MAX_ATTRIBUTES));
    if (max_attributes == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (attributes != Py_None) {
        if (!PyDict_CheckExact(attributes)) {
            return START_NOT_HANDLED; /* a function, another mapping */
        }
        if ((max_attributes >= 0 && PyDict_GET_SIZE(attributes) > max_attributes) || !plain_values(attributes)) {
            return START_NOT_HANDLED;
        }
    }
    /* The parent's SpanContext (a borrowed reference into the parent span), or none. */
    if (key == NULL && (key = span_key()) == NULL) { /* key: the caller's, else looked up */
        return PyErr_Occurred() ? NULL : START_NOT_HANDLED;
    }
    PyObject *parent_span = PyDict_GetItemWithError(parent, key);
    PyObject *parent_context = NULL;
    PyObject *held = NULL; /* a reference to the parent context when read by getattr */
    if (parent_span == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    else {
        PyTypeObject *type = Py_TYPE(parent_span);
        if (type == start_type) {
            held = parent_context = Py_XNewRef(slot_get(parent_span, L_CONTEXT));
        }
        else {
            Py_ssize_t i, n = PyTuple_GET_SIZE(start_span_types);
            for (i = 0; i < n; i++) {
                if ((PyObject *)type == PyTuple_GET_ITEM(start_span_types, i)) {
                    break;
                }
            }
            if (i == n) {
                return START_NOT_HANDLED; /* another kind of span: its get_span_context() */
            }
            held = parent_context = PyObject_GetAttr(parent_span, s_context);
            if (held == NULL) {
                PyErr_Clear();
                return START_NOT_HANDLED;
            }
        }
        if (parent_context == NULL || Py_TYPE(parent_context) != (PyTypeObject *)span_context_type
            || PyTuple_GET_SIZE(parent_context) != 6) {
            Py_XDECREF(held);
            return START_NOT_HANDLED;
        }
        if (PyTuple_GET_ITEM(parent_context, 5) != Py_True) {
            if (PyTuple_GET_ITEM(parent_context, 5) != Py_False) {
                Py_XDECREF(held);
                return START_NOT_HANDLED;
            }
            parent_context = NULL; /* invalid: a root span, as the SDK makes it */
        }
    }
    long outcomes = PyLong_AsLong(PyTuple_GET_ITEM(plan, PLAN_OUTCOMES));
    if (outcomes == -1 && PyErr_Occurred()) {
        Py_XDECREF(held);
        return NULL;
    }
    PyObject *result = START_NOT_HANDLED;
    PyObject *trace_id = NULL, *span_id = NULL, *context = NULL, *span = NULL, *kept = NULL;
    PyObject *trace_state;
    long flags, outcome;
    if (parent_context != NULL) {
        PyObject *parent_flags = PyTuple_GET_ITEM(parent_context, 3);
        PyObject *remote = PyTuple_GET_ITEM(parent_context, 2);
        if (!PyLong_Check(parent_flags) || (remote != Py_True && remote != Py_False)) {
            goto done;
        }
        long value = PyLong_AsLong(parent_flags);
        if (value == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            goto done;
        }
        int index = (remote == Py_True ? 2 : 0) + ((value & 1) ? 0 : 1);
        outcome = (outcomes >> (2 * index)) & 3;
        flags = value & 2; /* the random trace id flag, the parent's */
        trace_id = Py_NewRef(PyTuple_GET_ITEM(parent_context, 0));
        trace_state = PyTuple_GET_ITEM(parent_context, 4);
    }
    else {
        if (!(outcomes & (1 << 10))) {
            goto done; /* the root's decision is the sampler's call */
        }
        outcome = (outcomes >> 8) & 3;
        flags = PyTuple_GET_ITEM(plan, PLAN_ROOT_RANDOM) == Py_True ? 2 : 0;
        trace_state = default_trace_state;
    }
    if (!(outcome & 1)) {
        goto done; /* not recorded: the NonRecordingSpan is Python's */
    }
    if (outcome & 2) {
        flags |= 1;
    }
    if (trace_id == NULL && (trace_id = random_id(int_128)) == NULL) {
        result = NULL;
        goto done;
    }
    if ((span_id = random_id(int_64)) == NULL) {
        result = NULL;
        goto done;
    }
    /* A parent's trace id is valid (its context says so), a span id drawn as getrandbits(64)
       is, until 0: what SpanContext's check gives for them. */
    int valid = parent_context != NULL ? 1 : in_id_range(trace_id, trace_id_max, 128);
    if (valid > 0 && !(PyLong_CheckExact(span_id) && bits_are_getrandbits)) {
        valid = in_id_range(span_id, span_id_max, 64);
    }
    if (valid < 0) {
        result = NULL;
        goto done;
    }
    /* SpanContext(trace_id, span_id, False, flags, trace_state): the tuple its __new__ makes. */
    PyObject *values[6] = {trace_id, span_id, Py_False, PyTuple_GET_ITEM(start_flags, flags), trace_state,
                           valid ? Py_True : Py_False};
#if PY_VERSION_HEX < 0x030E0000
    /* What tuple.__new__(SpanContext, values) does (tuple_subtype_new), without the two
       argument tuples; from 3.14 on a tuple also caches its hash: tuple.__new__ then. */
    context = ((PyTypeObject *)span_context_type)->tp_alloc((PyTypeObject *)span_context_type, 6);
    if (context == NULL) {
        result = NULL;
        goto done;
    }
    for (int i = 0; i < 6; i++) {
        PyTuple_SET_ITEM(context, i, Py_NewRef(values[i]));
    }
#else
    PyObject *items = PyTuple_FromArray(values, 6);
    PyObject *args = items == NULL ? NULL : PyTuple_Pack(1, items);
    Py_XDECREF(items);
    if (args == NULL) {
        result = NULL;
        goto done;
    }
    context = PyTuple_Type.tp_new((PyTypeObject *)span_context_type, args, NULL);
    Py_DECREF(args);
    if (context == NULL) {
        result = NULL;
        goto done;
    }
#endif
    kept = attributes == Py_None ? PyDict_New() : PyDict_Copy(attributes);
    if (kept == NULL) {
        result = NULL;
        goto done;
    }
    PyObject *resource = Py_NewRef(PyTuple_GET_ITEM(plan, PLAN_RESOURCE));
    PyObject *pid = Py_XNewRef(module_global(G_PID, start_queue_dict, s_pid));
    if (pid == NULL) {
        Py_DECREF(resource);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "autotrace.span_queue has no pid");
        }
        result = NULL;
        goto done;
    }
    span = start_type->tp_alloc(start_type, 0); /* object.__new__(LightSpan): LightSpan is not abstract */
    if (span == NULL) {
        Py_DECREF(resource);
        Py_DECREF(pid);
        result = NULL;
        goto done;
    }
    slot_set(span, L_NAME, Py_NewRef(name));
    slot_set(span, L_CONTEXT, Py_NewRef(context));
    slot_set(span, L_PARENT, Py_NewRef(parent_context == NULL ? Py_None : parent_context));
    slot_set(span, L_RESOURCE, resource);
    slot_set(span, L_ATTRIBUTES, Py_NewRef(kept));
    slot_set(span, L_KIND, Py_NewRef(kind));
    slot_set(span, L_PROCESSOR, Py_NewRef(PyTuple_GET_ITEM(plan, PLAN_PROCESSOR)));
    slot_set(span, L_LIMITS, Py_NewRef(PyTuple_GET_ITEM(plan, PLAN_LIMITS)));
    slot_set(span, L_INFO, Py_NewRef(PyTuple_GET_ITEM(plan, PLAN_INFO)));
    slot_set(span, L_SCOPE, Py_NewRef(PyTuple_GET_ITEM(plan, PLAN_SCOPE)));
    slot_set(span, L_LINKS, Py_NewRef(empty_tuple));
    slot_set(span, L_EVENTS, Py_NewRef(empty_tuple));
    slot_set(span, L_STATUS, Py_NewRef(unset_status));
    slot_set(span, L_END, Py_NewRef(Py_None));
    slot_set(span, L_LOCK, Py_NewRef(Py_None)); /* made at its first use (light_lock_get) */
    slot_set(span, L_METRICS, Py_NewRef(Py_None));
    slot_set(span, L_PID, pid);
    slot_set(span, L_PLAN, Py_NewRef(PyTuple_GET_ITEM(plan, PLAN_PLAN)));
    PyObject *start = now_ns();
    if (start == NULL) {
        Py_CLEAR(span);
        result = NULL;
        goto done;
    }
    slot_set(span, L_START, start);
    result = span;
done:
    Py_XDECREF(held);
    Py_XDECREF(trace_id);
    Py_XDECREF(span_id);
    Py_XDECREF(context);
    Py_XDECREF(kept);
    return result;
}

PyDoc_STRVAR(start_light_doc,
"start_light(tracer, name, kind, parent, attributes) -> LightSpan | None\n\n"
"light_span.start_span's common case in C: a tracer light_span registered (a parent-based\n"
"sampler with fixed decisions, light-end processors only, the SDK's random ids), the\n"
"parent's span an SDK or light span (or none), attributes None or a plain dict of\n"
"str/bool/int/float within the count limit, the span recorded. None for anything else:\n"
"the Python way then starts it.");

static PyObject *
sp_start_light(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "start_light(tracer, name, kind, parent, attributes)");
        return NULL;
    }
    PyObject *span = start_common(args[0], args[1], args[2], args[3], args[4], NULL);
    if (span == START_NOT_HANDLED) {
        Py_RETURN_NONE;
    }
    return span;
}

/* A new Context: parent's values, span under span_key, value under key unless key is None. */
static PyObject *
new_context(PyObject *span_key_obj, PyObject *span, PyObject *parent, PyObject *key, PyObject *value)
{
    PyObject *ctx = PyDict_Type.tp_new((PyTypeObject *)start_context_type, empty_tuple, NULL);
    if (ctx == NULL) {
        return NULL;
    }
    if (PyDict_Merge(ctx, parent, 1) < 0 || PyDict_SetItem(ctx, span_key_obj, span) < 0
        || (key != Py_None && PyDict_SetItem(ctx, key, value) < 0)) {
        Py_DECREF(ctx);
        return NULL;
    }
    return ctx;
}

PyDoc_STRVAR(with_span_doc,
"with_span(span, parent, key=None, value=None) -> Context\n\n"
"autotrace.api.with_span: parent's values with span current (and key set to value when\n"
"key is not None), in one new Context.");

static PyObject *
sp_with_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "with_span(span, parent, key=None, value=None)");
        return NULL;
    }
    if (start_context_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "autotrace._speedups: with_span is not configured");
        return NULL;
    }
    PyObject *span_current = span_key();
    if (span_current == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        return PyObject_Vectorcall(start_with_span_py, args, (size_t)nargs, NULL); /* the API's functions */
    }
    return new_context(span_current, args[0], args[1], nargs > 2 ? args[2] : Py_None, nargs > 3 ? args[3] : Py_None);
}

/* SpanHandle (register_handle): its class and the offsets of its slots span, context,
   _token, _ended. */
static PyTypeObject *handle_type;
static Py_ssize_t handle_offsets[4];

PyDoc_STRVAR(start_attached_doc,
"start_attached(tracer, name, kind, parent, attributes) -> SpanHandle | None\n\n"
"spans.start's common case (a SpanHandle, attached): start_light's span, with_span's\n"
"context made current through the API's context variable, in one call; None when\n"
"start_light would give None or the API's runtime context is not the context variable.");

/* start_attached's work: a new SpanHandle, NULL with an error set, or START_NOT_HANDLED. */
static PyObject *
attached_common(PyObject *tracer, PyObject *name, PyObject *kind, PyObject *parent, PyObject *attributes,
                PyObject *variable)
{
    if (handle_type == NULL || start_type == NULL) {
        return START_NOT_HANDLED;
    }
    if (variable == NULL) { /* else the caller's, read from autotrace.api just before */
        variable = module_global(G_VARIABLE, start_api_dict, s_variable);
    }
    PyObject *key = variable == NULL ? NULL : span_key();
    if (key == NULL || !PyContextVar_CheckExact(variable)) {
        return PyErr_Occurred() ? NULL : START_NOT_HANDLED;
    }
    Py_INCREF(variable);
    Py_INCREF(key);
    PyObject *handle = NULL, *ctx = NULL, *token = NULL;
    PyObject *span = start_common(tracer, name, kind, parent, attributes, key);
    if (span == START_NOT_HANDLED) {
        handle = START_NOT_HANDLED;
        goto done;
    }
    if (span == NULL) {
        goto done;
    }
    ctx = new_context(key, span, parent, Py_None, Py_None);
    handle = ctx == NULL ? NULL : handle_type->tp_alloc(handle_type, 0);
    token = handle == NULL ? NULL : PyContextVar_Set(variable, ctx); /* last: nothing to undo after it */
    if (token == NULL) {
        Py_CLEAR(handle);
        goto done;
    }
    PyObject *values[4] = {span, ctx, token, Py_False};
    for (int i = 0; i < 4; i++) {
        PyObject **slot = (PyObject **)((char *)handle + handle_offsets[i]);
        Py_XSETREF(*slot, Py_NewRef(values[i]));
    }
done:
    Py_XDECREF(span == START_NOT_HANDLED ? NULL : span);
    Py_XDECREF(ctx);
    Py_XDECREF(token);
    Py_DECREF(variable);
    Py_DECREF(key);
    return handle;
}

static PyObject *
sp_start_attached(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "start_attached(tracer, name, kind, parent, attributes)");
        return NULL;
    }
    PyObject *handle = attached_common(args[0], args[1], args[2], args[3], args[4], NULL);
    return handle == START_NOT_HANDLED ? Py_NewRef(Py_None) : handle;
}

/* -- spans.start, spans.new_span, SpanHandle.close and set_attributes, LightSpan's _lock and
   set_known in C (autotrace/spans.py and light_span.py are the reference) -- */

static PyObject *handle_start_py;    /* spans.start (the reference) */
static PyObject *handle_new_span_py; /* spans.new_span (the reference) */
static PyObject *handle_close_py;    /* SpanHandle.close (the reference) */
static PyObject *handle_set_py;      /* SpanHandle.set_attributes (the reference) */
static PyObject *handle_kinds;       /* spans._kinds: SpanKind members by name */
static PyObject *known_py;           /* LightSpan.set_known (the reference) */
static PyTypeObject *plan_type;      /* light_span._Plan ... */
static Py_ssize_t plan_fast_offset;  /* ... and the offset of its slot "fast" */
static PyObject *s_loaded, *s_suppress, *s_tracers, *s_reset_current, *s_detach, *s_report, *s_end;

enum { H_SPAN, H_CONTEXT, H_TOKEN, H_ENDED };

static PyObject *light_span_end(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);

static inline PyObject **
handle_slot(PyObject *handle, int i)
{
    return (PyObject **)((char *)handle + handle_offsets[i]);
}

/* The plan tuple of a light span (borrowed), or NULL (no error): its _plan's "fast". */
static PyObject *
span_plan_entry(PyObject *span)
{
    PyObject *plan = slot_get(span, L_PLAN);
    if (plan == NULL || plan_type == NULL || Py_TYPE(plan) != plan_type) {
        return NULL;
    }
    PyObject *entry = *(PyObject **)((char *)plan + plan_fast_offset);
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != N_PLAN) {
        return NULL;
    }
    return entry;
}

/* A fast call's arguments passed on to the reference function `py`. */
static PyObject *
call_reference(PyObject *py, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (py == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "autotrace._speedups: spans is not registered");
        return NULL;
    }
    return PyObject_Vectorcall(py, args, (size_t)nargs, kwnames);
}

PyDoc_STRVAR(start_handle_doc,
"start_handle(tracer, name, kind, attributes=None, parent=None, links=None, attach=True, handle=SpanHandle)\n\n"
"spans.start in C for its common case (positional arguments up to parent, a tracer of\n"
"api.tracers, the kind by name or member, the API's context variable, start_attached's\n"
"span); anything else, and an error, is spans.start's (the reference, which reports).");

static PyObject *
sp_start_handle(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 3 || nargs > 5 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) || handle_type == NULL
        || start_type == NULL || module_global(G_LOADED, start_api_dict, s_loaded) != Py_True) {
        goto python;
    }
    PyObject *parent = nargs > 4 ? args[4] : Py_None;
    PyObject *current = NULL; /* a reference to the current context when parent is None */
    PyObject *variable = module_global(G_VARIABLE, start_api_dict, s_variable);
    if (variable == NULL || !PyContextVar_CheckExact(variable)) {
        goto python; /* the API's functions: the reference */
    }
    if (parent == Py_None) {
        PyObject *reset = module_global(G_RESET, start_api_dict, s_reset_current);
        if (reset == NULL || reset == Py_None || PyContextVar_Get(variable, NULL, &current) < 0 || current == NULL) {
            goto python;
        }
        parent = current;
    }
    PyObject *result = START_NOT_HANDLED;
    if (!PyDict_Check(parent)) {
        goto done;
    }
    PyObject *suppress = module_global(G_SUPPRESS, start_api_dict, s_suppress);
    PyObject *value = suppress == NULL ? NULL : PyDict_GetItemWithError(parent, suppress);
    if (value != NULL) {
        Py_INCREF(value);
        int on = PyObject_IsTrue(value);
        Py_DECREF(value);
        if (on != 0) {
            result = on < 0 ? START_NOT_HANDLED : Py_NewRef(Py_None); /* suppressed: None */
            goto done;
        }
    }
    else if (PyErr_Occurred()) {
        goto done;
    }
    PyObject *kind = args[2];
    if (PyUnicode_Check(kind)) {
        kind = handle_kinds == NULL ? NULL : PyDict_GetItemWithError(handle_kinds, kind);
        if (kind == NULL) {
            goto done;
        }
    }
    PyObject *tracers = module_global(G_TRACERS, start_api_dict, s_tracers);
    PyObject *tracer = tracers == NULL || !PyDict_Check(tracers) ? NULL : PyDict_GetItemWithError(tracers, args[0]);
    if (tracer == NULL) {
        goto done;
    }
    Py_INCREF(tracer);
    Py_INCREF(kind);
    Py_INCREF(variable);
    result = attached_common(tracer, args[1], kind, parent, nargs > 3 ? args[3] : Py_None, variable);
    Py_DECREF(variable);
    Py_DECREF(tracer);
    Py_DECREF(kind);
done:
    Py_XDECREF(current);
    if (result == NULL) {
        PyErr_Clear(); /* the reference meets it again, and reports it */
    }
    else if (result != START_NOT_HANDLED) {
        return result;
    }
python:
    if (PyErr_Occurred()) {
        PyErr_Clear();
    }
    return call_reference(handle_start_py, args, nargs, kwnames);
}

PyDoc_STRVAR(new_span_doc,
"new_span(tracer, name, kind, parent, attributes=None, links=None) -> Span\n\n"
"spans.new_span in C for its common case (a tracer of api.tracers, no links, start_light's\n"
"span); anything else is spans.new_span's (the reference).");

static PyObject *
sp_new_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 4 || nargs > 6 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) || start_type == NULL
        || (nargs > 5 && args[5] != Py_None)) {
        return call_reference(handle_new_span_py, args, nargs, kwnames);
    }
    PyObject *tracers = module_global(G_TRACERS, start_api_dict, s_tracers);
    PyObject *tracer = tracers == NULL || !PyDict_Check(tracers) ? NULL : PyDict_GetItemWithError(tracers, args[0]);
    if (tracer == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        return call_reference(handle_new_span_py, args, nargs, kwnames);
    }
    Py_INCREF(tracer);
    PyObject *span = start_common(tracer, args[1], args[2], args[3], nargs > 4 ? args[4] : Py_None, NULL);
    Py_DECREF(tracer);
    if (span == START_NOT_HANDLED) {
        return call_reference(handle_new_span_py, args, nargs, kwnames);
    }
    return span;
}

/* Calls handle.report(exc) for the exception set, when it is an Exception (else it stays
   set): 0 when reported (none set now), -1 otherwise. */
static int
report_exception(PyObject *handle)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *exc_type, *exc, *tb;
    PyErr_Fetch(&exc_type, &exc, &tb);
    PyErr_NormalizeException(&exc_type, &exc, &tb);
    if (tb != NULL && exc != NULL) {
        PyException_SetTraceback(exc, tb);
    }
    PyObject *done = exc == NULL ? NULL : PyObject_CallMethodOneArg(handle, s_report, exc);
    Py_XDECREF(exc_type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    return 0;
}

/* SpanHandle.close(self) in C: its end (the light span's compiled end called directly) and
   its context left, as the Python close does. */
static PyObject *
handle_close(PyObject *self, PyObject *unused)
{
    if (handle_type == NULL || handle_close_py == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "autotrace._speedups: spans is not registered");
        return NULL;
    }
    if (!PyObject_TypeCheck(self, handle_type) || *handle_slot(self, H_ENDED) == NULL || *handle_slot(self, H_TOKEN) == NULL) {
        return PyObject_CallOneArg(handle_close_py, self);
    }
    PyObject *ended = *handle_slot(self, H_ENDED);
    if (ended != Py_True) {
        int is_ended = ended == Py_False ? 0 : PyObject_IsTrue(ended);
        if (is_ended < 0) {
            return NULL;
        }
        if (!is_ended) {
            Py_XSETREF(*handle_slot(self, H_ENDED), Py_NewRef(Py_True));
            PyObject *span = *handle_slot(self, H_SPAN);
            PyObject *done;
            if (span == NULL) {
                PyErr_SetString(PyExc_AttributeError, "span");
                done = NULL;
            }
            else {
                Py_INCREF(span);
                done = Py_TYPE(span) == start_type ? light_span_end(span, NULL, 0, NULL)
                                                   : PyObject_CallMethodNoArgs(span, s_end);
                Py_DECREF(span);
            }
            if (done == NULL) {
                if (report_exception(self) < 0) {
                    return NULL;
                }
            }
            else {
                Py_DECREF(done);
            }
        }
    }
    PyObject *token = *handle_slot(self, H_TOKEN);
    if (token == NULL || token == Py_None) {
        Py_RETURN_NONE;
    }
    *handle_slot(self, H_TOKEN) = Py_NewRef(Py_None); /* the reference to the token is now ours */
    PyObject *reset = module_global(G_RESET, start_api_dict, s_reset_current);
    PyObject *done = NULL;
    if (reset == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "autotrace.api has no reset_current");
        }
    }
    else if (reset == Py_None) {
        PyObject *detach = module_global(G_DETACH, start_api_dict, s_detach); /* api.detach: never raises */
        if (detach != NULL) {
            Py_INCREF(detach);
            done = PyObject_CallOneArg(detach, token);
            Py_DECREF(detach);
        }
        else if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "autotrace.api has no detach");
        }
    }
    else {
        PyObject *variable = module_global(G_VARIABLE, start_api_dict, s_variable);
        if (variable != NULL && PyContextVar_CheckExact(variable) && PyContextToken_CheckExact(token)
            && PyCFunction_Check(reset) && PyCFunction_GET_SELF(reset) == variable) {
            done = PyContextVar_Reset(variable, token) < 0 ? NULL : Py_NewRef(Py_None); /* what reset(token) does */
        }
        else {
            Py_INCREF(reset);
            done = PyObject_CallOneArg(reset, token);
            Py_DECREF(reset);
        }
        if (done == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear(); /* a token of another context: nothing to undo */
            done = Py_NewRef(Py_None);
        }
    }
    Py_DECREF(token);
    if (done == NULL) {
        return NULL;
    }
    Py_DECREF(done);
    Py_RETURN_NONE;
}

static PyMethodDef handle_close_def = {
    "close", (PyCFunction)handle_close, METH_NOARGS,
    "close(): end the span and leave its context (autotrace/_speedups.c; spans.SpanHandle.close is the reference)."};

/* LightSpan.set_known(self, attributes)'s common case, no Python code run while it sets
   them (so no other thread sees it half done): 1 set, 0 not handled (the reference's work),
   -1 with an error set. */
static int
known_common(PyObject *self, PyObject *attributes)
{
    if (Py_TYPE(self) != start_type || !PyDict_CheckExact(attributes)) {
        return 0;
    }
    PyObject *lock = slot_get(self, L_LOCK), *current = slot_get(self, L_ATTRIBUTES);
    if ((lock != NULL && lock != Py_None) || slot_get(self, L_END) != Py_None || current == NULL
        || !PyDict_CheckExact(current)) {
        return 0; /* a lock made (the app used the span), ended, or the SDK's attributes */
    }
    PyObject *entry = span_plan_entry(self);
    if (entry == NULL || PyTuple_GET_ITEM(entry, PLAN_LIMITS) != slot_get(self, L_LIMITS)) {
        return 0;
    }
    Py_ssize_t max_attributes = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, PLAN_MAX_ATTRIBUTES));
    if (max_attributes == -1 && PyErr_Occurred()) {
        return -1;
    }
    Py_ssize_t pos = 0, added = 0;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        PyTypeObject *type = Py_TYPE(value);
        if (!PyUnicode_CheckExact(key)
            || (type != &PyUnicode_Type && type != &PyBool_Type && type != &PyLong_Type && type != &PyFloat_Type)) {
            return 0;
        }
        int found = PyDict_Contains(current, key);
        if (found < 0) {
            return -1;
        }
        added += !found;
    }
    if (max_attributes >= 0 && PyDict_GET_SIZE(current) + added > max_attributes) {
        return 0; /* the SDK's mapping drops what is over its limit */
    }
    pos = 0;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        /* As the SDK's mapping sets it: a key set again moves to the end. */
        int found = added == PyDict_GET_SIZE(attributes) ? 0 : PyDict_Contains(current, key);
        if (found < 0 || (found && PyDict_DelItem(current, key) < 0)) {
            return -1;
        }
        if (PyDict_SetItem(current, key, value) < 0) {
            return -1;
        }
    }
    return 1;
}

static PyObject *
light_set_known(PyObject *self, PyObject *attributes)
{
    int done = known_common(self, attributes);
    if (done < 0) {
        return NULL;
    }
    if (done > 0) {
        Py_RETURN_NONE;
    }
    if (known_py == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "autotrace._speedups: set_known is not registered");
        return NULL;
    }
    return PyObject_CallFunctionObjArgs(known_py, self, attributes, NULL);
}

static PyMethodDef light_set_known_def = {
    "set_known", (PyCFunction)light_set_known, METH_O,
    "set_known(attributes): the hook's own attributes (autotrace/_speedups.c; light_span.LightSpan.set_known is the reference)."};

/* SpanHandle.set_attributes(self, attributes) in C: set_known on a light span, never raising
   (an exception reported); anything else is the reference's. */
static PyObject *
handle_set_attributes(PyObject *self, PyObject *attributes)
{
    PyObject *span = handle_type != NULL && PyObject_TypeCheck(self, handle_type) ? *handle_slot(self, H_SPAN) : NULL;
    if (span != NULL && Py_TYPE(span) == start_type) {
        Py_INCREF(span);
        int done = known_common(span, attributes);
        Py_DECREF(span);
        if (done > 0) {
            Py_RETURN_NONE;
        }
        if (done < 0) {
            return report_exception(self) < 0 ? NULL : Py_NewRef(Py_None);
        }
    }
    if (handle_set_py == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "autotrace._speedups: spans is not registered");
        return NULL;
    }
    return PyObject_CallFunctionObjArgs(handle_set_py, self, attributes, NULL);
}

static PyMethodDef handle_set_def = {
    "set_attributes", (PyCFunction)handle_set_attributes, METH_O,
    "set_attributes(attributes): add attributes to the span (autotrace/_speedups.c; spans.SpanHandle.set_attributes is the reference)."};

/* LightSpan._lock: the span's lock, made at its first use (the SDK's methods take it; a
   hook's span that the app never touches never has one). */
static PyObject *
light_lock_get(PyObject *self, void *closure)
{
    if (start_type == NULL || !PyObject_TypeCheck(self, start_type)) {
        PyErr_SetString(PyExc_TypeError, "_lock: not a light span");
        return NULL;
    }
    PyObject *lock = slot_get(self, L_LOCK);
    if (lock != NULL && lock != Py_None) {
        return Py_NewRef(lock);
    }
    PyObject *made = PyObject_CallNoArgs(start_lock); /* may run other threads' code ... */
    if (made == NULL) {
        return NULL;
    }
    lock = slot_get(self, L_LOCK); /* ... so look again: the first lock made is the span's */
    if (lock != NULL && lock != Py_None) {
        Py_DECREF(made);
        return Py_NewRef(lock);
    }
    slot_set(self, L_LOCK, Py_NewRef(made));
    return made;
}

static int
light_lock_set(PyObject *self, PyObject *value, void *closure)
{
    if (start_type == NULL || !PyObject_TypeCheck(self, start_type) || value == NULL) {
        PyErr_SetString(PyExc_TypeError, "_lock: a light span's lock, not deleted");
        return -1;
    }
    slot_set(self, L_LOCK, Py_NewRef(value));
    return 0;
}

static PyGetSetDef light_lock_def = {"_lock", light_lock_get, light_lock_set,
                                     "The span's lock, made at its first use.", NULL};

PyDoc_STRVAR(register_handle_doc,
"register_handle(cls, slot_names[, start_py, new_span_py, close_py, set_attributes_py, kinds])\n"
"-> bool | (close, set_attributes)\n\n"
"spans.SpanHandle and the names of its slots span, context, _token, _ended: start_attached\n"
"makes its instances. False when a name is not an object slot of cls. With the references\n"
"(spans.start, spans.new_span, SpanHandle.close and set_attributes, spans._kinds), also\n"
"start_handle and new_span: the compiled close and set_attributes (method descriptors).");

static PyObject *
sp_register_handle(PyObject *module, PyObject *args)
{
    PyObject *cls, *names, *start_py = NULL, *new_span_py = NULL, *close_py = NULL, *set_py = NULL, *kinds = NULL;
    if (!PyArg_ParseTuple(args, "O!O!|OOOOO!:register_handle", &PyType_Type, &cls, &PyTuple_Type, &names, &start_py,
                          &new_span_py, &close_py, &set_py, &PyDict_Type, &kinds)) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(names) != 4) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t offsets[4];
    for (int i = 0; i < 4; i++) {
        if (!slot_offset(cls, PyTuple_GET_ITEM(names, i), &offsets[i])) {
            Py_RETURN_FALSE;
        }
    }
    if (empty_tuple == NULL) {
        Py_RETURN_FALSE; /* register_light_start first */
    }
    if (kinds == NULL) {
        memcpy(handle_offsets, offsets, sizeof(offsets));
        Py_XSETREF(handle_type, (PyTypeObject *)Py_NewRef(cls));
        Py_RETURN_TRUE;
    }
    PyObject *close = PyDescr_NewMethod((PyTypeObject *)cls, &handle_close_def);
    PyObject *set = close == NULL ? NULL : PyDescr_NewMethod((PyTypeObject *)cls, &handle_set_def);
    PyObject *result = set == NULL ? NULL : PyTuple_Pack(2, close, set);
    Py_XDECREF(close);
    Py_XDECREF(set);
    if (result == NULL) {
        return NULL;
    }
    memcpy(handle_offsets, offsets, sizeof(offsets));
    Py_XSETREF(handle_start_py, Py_NewRef(start_py));
    Py_XSETREF(handle_new_span_py, Py_NewRef(new_span_py));
    Py_XSETREF(handle_close_py, Py_NewRef(close_py));
    Py_XSETREF(handle_set_py, Py_NewRef(set_py));
    Py_XSETREF(handle_kinds, Py_NewRef(kinds));
    Py_XSETREF(handle_type, (PyTypeObject *)Py_NewRef(cls));
    return result;
}

/* The lock class the factory makes and its acquire and release (method descriptors),
   called directly for a lock of exactly that class (no method lookup). */
static PyTypeObject *lock_type;
static PyObject *lock_acquire, *lock_release;

static PyObject *
lock_call(PyObject *lock, PyObject *method, PyObject *name)
{
    if (Py_TYPE(lock) == lock_type && method != NULL) {
        return PyObject_Vectorcall(method, &lock, 1, NULL);
    }
    return PyObject_CallMethodNoArgs(lock, name);
}

/* Sets the end time `end` (a reference taken) on a light span under its lock, made by now:
   1 ended here, 0 ended already (by another thread), -1 with an error set. */
static int
light_end_locked(PyObject *self, PyObject *lock, PyObject *end)
{
    PyObject *acquired = lock_call(lock, lock_acquire, s_acquire);
    if (acquired == NULL) {
        Py_DECREF(end);
        return -1;
    }
    Py_DECREF(acquired);
    /* Under the lock: another thread may have ended it, or the app set an attribute. */
    int done = 1;
    if (slot_get(self, L_END) != Py_None) {
        Py_DECREF(end);
        done = 0;
    }
    else {
        slot_set(self, L_END, end);
        PyObject *attributes = slot_get(self, L_ATTRIBUTES);
        if (attributes != NULL && !PyDict_CheckExact(attributes) && PyObject_SetAttr(attributes, s_immutable, Py_True) < 0) {
            done = -1; /* as the Python end would raise */
        }
    }
    PyObject *exc_type = NULL, *exc_value = NULL, *exc_tb = NULL;
    if (done < 0) {
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    }
    PyObject *released = lock_call(lock, lock_release, s_release);
    if (released == NULL) {
        Py_XDECREF(exc_type);
        Py_XDECREF(exc_value);
        Py_XDECREF(exc_tb);
        return -1;
    }
    Py_DECREF(released);
    if (done < 0) {
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    return done;
}

/* LightSpan.end(self, end_time=None) in C for the common case; else its Python end. */
static PyObject *
light_span_end(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *result = NULL;
    if (Py_TYPE(self) != start_type || nargs > 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)
        || slot_get(self, L_START) == NULL || slot_get(self, L_START) == Py_None || slot_get(self, L_END) != Py_None
        || slot_get(self, L_ATTRIBUTES) == NULL || !PyDict_CheckExact(slot_get(self, L_ATTRIBUTES))) {
        goto python;
    }
    PyObject *end = now_ns(); /* first: an allocation may run other threads' code */
    if (end == NULL) {
        return NULL;
    }
    PyObject *lock = slot_get(self, L_LOCK);
    int ended;
    if (lock == NULL || lock == Py_None) {
        /* No lock was ever made (the lazy _lock): no thread is inside the span's lock, and
           any that takes it later makes it first. Under the GIL, with no Python code run
           between them, this check and set are one step. */
        ended = slot_get(self, L_END) == Py_None;
        if (ended) {
            slot_set(self, L_END, end);
            PyObject *attributes = slot_get(self, L_ATTRIBUTES);
            if (attributes != NULL && !PyDict_CheckExact(attributes) && PyObject_SetAttr(attributes, s_immutable, Py_True) < 0) {
                return NULL;
            }
        }
        else {
            Py_DECREF(end);
        }
    }
    else {
        Py_INCREF(lock);
        ended = light_end_locked(self, lock, end);
        Py_DECREF(lock);
        if (ended < 0) {
            return NULL;
        }
    }
    if (!ended) {
        goto python; /* ended already: the SDK's warning */
    }
    /* Only the plan's light ends (the agent's processors), when nothing was added since. */
    PyObject *plan = slot_get(self, L_PLAN), *processor = slot_get(self, L_PROCESSOR);
    PyObject *entry = span_plan_entry(self); /* the plan's "fast", read through its slot */
    if (entry != NULL) {
        Py_INCREF(entry);
    }
    else if (plan != NULL && plan != Py_None) {
        entry = PyObject_GetAttr(plan, s_fast);
    }
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != N_PLAN || processor == NULL) {
        if (entry == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(entry);
        return PyObject_CallMethodNoArgs(self, s_after_end);
    }
    PyObject *processors = PyObject_GetAttr(processor, s_span_processors);
    if (processors == NULL) {
        PyErr_Clear();
    }
    else {
        Py_DECREF(processors);
    }
    if (processors == NULL || processors != PyTuple_GET_ITEM(entry, PLAN_KNOWN)
        || PyTuple_GET_ITEM(entry, PLAN_PROCESSOR) != processor) {
        Py_DECREF(entry);
        return PyObject_CallMethodNoArgs(self, s_after_end);
    }
    PyObject *pid = module_global(G_PID, start_queue_dict, s_pid);
    int same = pid == NULL ? -1 : PyObject_RichCompareBool(slot_get(self, L_PID), pid, Py_EQ);
    if (same <= 0) {
        Py_DECREF(entry);
        if (same < 0 && !PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "autotrace.span_queue has no pid");
        }
        return same < 0 ? NULL : Py_NewRef(Py_None); /* else a span of the parent's, before a fork */
    }
    PyObject *ends = PyTuple_GET_ITEM(entry, PLAN_LIGHT_ENDS);
    if (!PyTuple_CheckExact(ends)) {
        Py_DECREF(entry);
        return PyObject_CallMethodNoArgs(self, s_after_end);
    }
    Py_INCREF(ends);
    Py_DECREF(entry);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(ends); i++) {
        PyObject *done = PyObject_CallOneArg(PyTuple_GET_ITEM(ends, i), self);
        if (done == NULL) {
            Py_DECREF(ends);
            return NULL;
        }
        Py_DECREF(done);
    }
    Py_DECREF(ends);
    Py_RETURN_NONE;
python:
    if (start_end_py == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "autotrace._speedups: LightSpan's end is not registered");
        return NULL;
    }
    {
        Py_ssize_t n = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
        PyObject *stack[8];
        if (n + 1 > 8) {
            PyErr_SetString(PyExc_TypeError, "end() takes at most one argument");
            return NULL;
        }
        stack[0] = self;
        for (Py_ssize_t i = 0; i < n; i++) {
            stack[i + 1] = args[i];
        }
        result = PyObject_Vectorcall(start_end_py, stack, (size_t)(nargs + 1), kwnames);
    }
    return result;
}

static PyMethodDef light_end_def = {
    "end", (PyCFunction)(void (*)(void))light_span_end, METH_FASTCALL | METH_KEYWORDS,
    "end(end_time=None): the span's end (autotrace/_speedups.c for the common case, else the Python end)."};

PyDoc_STRVAR(register_light_start_doc,
"register_light_start(cls, slot_names, plans, api_globals, with_span_py, decision_key, span_types,\n"
"                     flags, getrandbits, lock, queue_globals, sdk_globals, context_type, end_py)\n"
"-> end method or None\n\n"
"Makes start_light and with_span work; returns LightSpan's compiled end (a method\n"
"descriptor, to set as cls.end), or None when a slot is not an object slot of cls.");

static PyObject *
sp_register_light_start(PyObject *module, PyObject *args)
{
    PyObject *cls, *names, *plans, *api_dict, *with_span_py, *decision_key, *span_types, *flags, *bits, *lock, *queue_dict,
        *sdk_dict, *context_type, *end_py, *plan_cls = NULL, *set_known_py = NULL;
    if (!PyArg_ParseTuple(args, "O!O!O!O!OOO!O!OOO!O!O!O|O!O:register_light_start", &PyType_Type, &cls, &PyTuple_Type,
                          &names, &PyDict_Type, &plans, &PyDict_Type, &api_dict, &with_span_py, &decision_key, &PyTuple_Type, &span_types,
                          &PyTuple_Type, &flags, &bits, &lock, &PyDict_Type, &queue_dict, &PyDict_Type, &sdk_dict,
                          &PyType_Type, &context_type, &end_py, &PyType_Type, &plan_cls, &set_known_py)) {
        return NULL;
    }
    Py_ssize_t fast_offset = 0;
    if (plan_cls != NULL && (set_known_py == NULL || !slot_offset(plan_cls, s_fast, &fast_offset))) {
        Py_RETURN_NONE;
    }
    if (PyTuple_GET_SIZE(names) != N_LIGHT_SLOTS || PyTuple_GET_SIZE(flags) != 4
        || !PyType_IsSubtype((PyTypeObject *)context_type, &PyDict_Type) || span_context_type == NULL
        || unset_status == NULL || default_trace_state == NULL) {
        Py_RETURN_NONE;
    }
    for (Py_ssize_t i = 0; i < 4; i++) {
        if (!PyLong_Check(PyTuple_GET_ITEM(flags, i))) {
            Py_RETURN_NONE;
        }
    }
    Py_ssize_t offsets[N_LIGHT_SLOTS];
    for (int i = 0; i < N_LIGHT_SLOTS; i++) {
        if (!slot_offset(cls, PyTuple_GET_ITEM(names, i), &offsets[i])) {
            Py_RETURN_NONE;
        }
    }
    if (empty_tuple == NULL) {
        empty_tuple = PyTuple_New(0);
        int_64 = PyLong_FromLong(64);
        int_128 = PyLong_FromLong(128);
        long_zero = PyLong_FromLong(0);
        span_id_max = PyLong_FromUnsignedLongLong(UINT64_MAX);
        PyObject *shift = PyLong_FromLong(128), *one = PyLong_FromLong(1);
        PyObject *big = shift == NULL || one == NULL ? NULL : PyNumber_Lshift(one, shift);
        trace_id_max = big == NULL ? NULL : PyNumber_Subtract(big, one);
        Py_XDECREF(shift);
        Py_XDECREF(one);
        Py_XDECREF(big);
        if (empty_tuple == NULL || int_64 == NULL || int_128 == NULL || long_zero == NULL || span_id_max == NULL
            || trace_id_max == NULL) {
            Py_CLEAR(empty_tuple);
            return NULL;
        }
    }
    PyObject *method = PyDescr_NewMethod((PyTypeObject *)cls, &light_end_def);
    if (method == NULL) {
        return NULL;
    }
    /* The factory's lock class and its methods, when they are method descriptors of it. */
    PyObject *sample = PyObject_CallNoArgs(lock);
    PyObject *acquire = sample == NULL ? NULL : PyObject_GetAttr((PyObject *)Py_TYPE(sample), s_acquire);
    PyObject *release = acquire == NULL ? NULL : PyObject_GetAttr((PyObject *)Py_TYPE(sample), s_release);
    if (release == NULL) {
        Py_XDECREF(sample);
        Py_XDECREF(acquire);
        Py_DECREF(method);
        return NULL;
    }
    if (Py_IS_TYPE(acquire, &PyMethodDescr_Type) && Py_IS_TYPE(release, &PyMethodDescr_Type)) {
        Py_XSETREF(lock_type, (PyTypeObject *)Py_NewRef(Py_TYPE(sample)));
        Py_XSETREF(lock_acquire, acquire);
        Py_XSETREF(lock_release, release);
    }
    else {
        Py_DECREF(acquire);
        Py_DECREF(release);
    }
    Py_DECREF(sample);
    memcpy(slot_offsets, offsets, sizeof(offsets));
    Py_XSETREF(start_plans, Py_NewRef(plans));
    Py_XSETREF(start_api_dict, Py_NewRef(api_dict));
    Py_XSETREF(start_with_span_py, Py_NewRef(with_span_py));
    Py_XSETREF(start_decision_key, Py_NewRef(decision_key));
    Py_XSETREF(start_span_types, Py_NewRef(span_types));
    Py_XSETREF(start_flags, Py_NewRef(flags));
    Py_XSETREF(start_bits, Py_NewRef(bits));
    /* The built-in Random.getrandbits (not a subclass's Python method): its ints are < 2**bits. */
    bits_are_getrandbits = PyCFunction_Check(bits) && strcmp(((PyCFunctionObject *)bits)->m_ml->ml_name, "getrandbits") == 0;
    Py_XSETREF(start_lock, Py_NewRef(lock));
    Py_XSETREF(start_queue_dict, Py_NewRef(queue_dict));
    Py_XSETREF(start_sdk_dict, Py_NewRef(sdk_dict));
    Py_XSETREF(start_context_type, Py_NewRef(context_type));
    Py_XSETREF(start_end_py, Py_NewRef(end_py));
    Py_XSETREF(start_type, (PyTypeObject *)Py_NewRef(cls));
    if (plan_cls == NULL) {
        return method;
    }
    /* With the plan class: (end, the lazy _lock's descriptor, set_known). */
    PyObject *lock_descr = PyDescr_NewGetSet((PyTypeObject *)cls, &light_lock_def);
    PyObject *known = lock_descr == NULL ? NULL : PyDescr_NewMethod((PyTypeObject *)cls, &light_set_known_def);
    PyObject *result = known == NULL ? NULL : PyTuple_Pack(3, method, lock_descr, known);
    Py_DECREF(method);
    Py_XDECREF(lock_descr);
    Py_XDECREF(known);
    if (result != NULL) {
        plan_fast_offset = fast_offset;
        Py_XSETREF(plan_type, (PyTypeObject *)Py_NewRef(plan_cls));
        Py_XSETREF(known_py, Py_NewRef(set_known_py));
    }
    return result;
}

static int intern(PyObject **slot, const char *name);

/* -- database calls (autotrace/db.py's compiled_call; branch dbfast2) --------------------
 *
 * db_call(library, target, key, func, self, args, kwargs): a database hook's usual call in
 * one C call. It does what autotrace.db.start_cached does when everything is known (the
 * context's decision kept in db._decided, the span's name and attributes kept by the
 * target under key, the tracer made, the compiled start registered), runs
 * func(self, *args, **kwargs) in the span, and closes the call as DbCall.close does
 * (SpanHandle.close: the span's end, the context reset); an exception of func is recorded
 * with DbCall.fail and goes on untouched. A call made where db._decided says "no span"
 * runs func alone. Anything else returns db.NOT_HANDLED before func is called, and the
 * hook takes the Python way (the reference), which fills what was missing. */

static PyObject *db_globals;       /* autotrace.db's globals: _decided, _CLIENT, _tracer_names */
static PyObject *db_api_dict;      /* autotrace.api's globals: _variable, tracers, IN_DB_CALL */
static PyObject *db_spans_dict;    /* autotrace.spans's globals: _compiled (None: no compiled start) */
static PyObject *db_not_handled;   /* db.NOT_HANDLED */
static PyTypeObject *db_call_type; /* db.DbCall */
static PyTypeObject *db_target_type; /* db.Target */
static Py_ssize_t db_call_offsets[6]; /* DbCall's span, context, _token, _ended, library, comment */
static Py_ssize_t db_spans_offset;   /* Target's _spans */
static PyObject *s_db_decided, *s_db_client, *s_db_tracer_names, *s_db_tracers, *s_db_in_call, *s_db_compiled,
    *s_db_fail, *s_db_report, *s_db_end;
enum { DB_SPAN, DB_CONTEXT, DB_TOKEN, DB_ENDED, DB_LIBRARY, DB_COMMENT };

#define DB_SLOT(obj, i) (*(PyObject **)((char *)(obj) + db_call_offsets[i]))

static void
db_slot_set(PyObject *call, int i, PyObject *value)
{
    Py_XSETREF(DB_SLOT(call, i), Py_XNewRef(value));
}

/* A borrowed item of dict d, NULL (no error set) when missing or on an error (cleared). */
static PyObject *
db_item(PyObject *d, PyObject *key)
{
    PyObject *found = d == NULL || !PyDict_Check(d) ? NULL : PyDict_GetItemWithError(d, key);
    if (found == NULL) {
        PyErr_Clear();
    }
    return found;
}

/* call.<method>(exc), its own failure cleared: DbCall.fail and report never raise. */
static void
db_call_method(PyObject *call, PyObject *method, PyObject *exc)
{
    PyObject *done = PyObject_CallMethodOneArg(call, method, exc);
    if (done == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(done);
}

/* DbCall.close (SpanHandle.close): end the span once, reset the context variable. */
static void
db_close(PyObject *call, PyObject *variable)
{
    if (DB_SLOT(call, DB_ENDED) == Py_False) {
        db_slot_set(call, DB_ENDED, Py_True);
        PyObject *span = DB_SLOT(call, DB_SPAN);
        PyObject *done = span == NULL ? NULL : PyObject_CallMethodNoArgs(span, s_db_end);
        if (done == NULL && span != NULL) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            db_call_method(call, s_db_report, value == NULL ? Py_None : value);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
        }
        Py_XDECREF(done);
    }
    PyObject *token = DB_SLOT(call, DB_TOKEN);
    if (token != NULL && token != Py_None) {
        Py_INCREF(token);
        db_slot_set(call, DB_TOKEN, Py_None);
        if (PyContextVar_Reset(variable, token) < 0) {
            PyErr_Clear(); /* a token of another context: nothing to undo */
        }
        Py_DECREF(token);
    }
}

/* func(self, *args, **kwargs). */
static PyObject *
db_run(PyObject *func, PyObject *self, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    PyObject *small[8], **stack = small;
    if (n + 1 > 8) {
        stack = PyMem_Malloc((size_t)(n + 1) * sizeof(PyObject *));
        if (stack == NULL) {
            return PyErr_NoMemory();
        }
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < n; i++) {
        stack[i + 1] = PyTuple_GET_ITEM(args, i);
    }
    PyObject *result = PyObject_VectorcallDict(func, stack, (size_t)(n + 1),
                                               kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0 ? kwargs : NULL);
    if (stack != small) {
        PyMem_Free(stack);
    }
    return result;
}

PyDoc_STRVAR(db_call_doc,
"db_call(library, target, key, func, self, args, kwargs) -> func's result | NOT_HANDLED\n\n"
"autotrace.db.compiled_call: start_cached's cached case, func(self, *args, **kwargs) in the\n"
"span, and the call's close, in one call (see autotrace/db.py); NOT_HANDLED, before func is\n"
"called, for anything else.");

static PyObject *
sp_db_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || !PyTuple_CheckExact(args[5]) || (args[6] != Py_None && !PyDict_CheckExact(args[6]))) {
        PyErr_SetString(PyExc_TypeError, "db_call(library, target, key, func, self, args, kwargs)");
        return NULL;
    }
    PyObject *library = args[0], *target = args[1], *key = args[2], *func = args[3], *self = args[4];
    PyObject *call_args = args[5], *kwargs = args[6] == Py_None ? NULL : args[6];
    if (db_call_type == NULL || Py_TYPE(target) != db_target_type) {
        return Py_NewRef(db_not_handled);
    }
    /* Strong references from here on: a key's __eq__ may run Python code. */
    PyObject *variable = Py_XNewRef(db_item(db_api_dict, s_variable));
    PyObject *decided = Py_XNewRef(db_item(db_globals, s_db_decided));
    PyObject *parent = NULL, *found = NULL, *tracer = NULL, *kind = NULL, *mark = NULL, *span = NULL, *call = NULL;
    PyObject *result = NULL;
    if (variable == NULL || !PyContextVar_CheckExact(variable) || decided == NULL || !PyTuple_CheckExact(decided)
        || PyTuple_GET_SIZE(decided) != 3 || PyContextVar_Get(variable, NULL, &parent) < 0 || parent == NULL
        || PyTuple_GET_ITEM(decided, 0) != parent) {
        PyErr_Clear();
        result = Py_NewRef(db_not_handled); /* another context: the Python way decides */
        goto done;
    }
    if (PyTuple_GET_ITEM(decided, 1) == Py_False) {
        result = db_run(func, self, call_args, kwargs); /* no span in this context */
        goto done;
    }
    /* The span's name and attributes, kept by the target; the tracer; the compiled start. */
    PyObject *spans = *(PyObject **)((char *)target + db_spans_offset);
    found = spans == NULL || !PyDict_CheckExact(spans) ? NULL : Py_XNewRef(PyDict_GetItemWithError(spans, key));
    PyObject *tracer_name = db_item(db_item(db_globals, s_db_tracer_names), library);
    tracer = tracer_name == NULL ? NULL : Py_XNewRef(db_item(db_item(db_api_dict, s_db_tracers), tracer_name));
    kind = Py_XNewRef(db_item(db_globals, s_db_client));
    mark = Py_XNewRef(db_item(db_api_dict, s_db_in_call));
    PyObject *compiled = db_item(db_spans_dict, s_db_compiled);
    if (found == NULL || !PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 2 || tracer == NULL || kind == NULL
        || kind == Py_None || compiled == NULL || compiled == Py_None || mark == NULL
        || PyTuple_GET_ITEM(decided, 1) != Py_True || PyTuple_GET_ITEM(decided, 2) != Py_False || start_type == NULL
        || empty_tuple == NULL) {
        PyErr_Clear(); /* an unhashable key */
        result = Py_NewRef(db_not_handled);
        goto done;
    }
    PyObject *start_args[5] = {tracer, PyTuple_GET_ITEM(found, 0), kind, parent, PyTuple_GET_ITEM(found, 1)};
    span = sp_start_light(module, start_args, 5);
    if (span == NULL || span == Py_None) {
        PyErr_Clear();
        result = Py_NewRef(db_not_handled); /* nothing started: the Python way starts it */
        goto done;
    }
    /* The DbCall (start_cached's, slot by slot), its context current. From here on the
       span is started: a failure of ours leaves the call untraced, as start_cached does. */
    call = PyBaseObject_Type.tp_new(db_call_type, empty_tuple, NULL);
    PyObject *ctx = NULL, *token = NULL;
    if (call != NULL) {
        db_slot_set(call, DB_SPAN, span);
        db_slot_set(call, DB_ENDED, Py_False);
        db_slot_set(call, DB_LIBRARY, library);
        db_slot_set(call, DB_COMMENT, Py_False);
        db_slot_set(call, DB_CONTEXT, Py_None); /* not kept: it holds the call (a cycle) */
        PyObject *with_args[4] = {span, parent, mark, call};
        ctx = sp_with_span(module, with_args, 4);
        token = ctx == NULL ? NULL : PyContextVar_Set(variable, ctx);
        db_slot_set(call, DB_TOKEN, token == NULL ? Py_None : token);
    }
    Py_XDECREF(ctx);
    if (token == NULL) {
        PyErr_Clear();
        result = db_run(func, self, call_args, kwargs);
        goto done;
    }
    Py_DECREF(token);
    result = db_run(func, self, call_args, kwargs);
    if (result == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value != NULL) {
            if (tb != NULL) {
                PyException_SetTraceback(value, tb);
            }
            db_call_method(call, s_db_fail, value);
        }
        db_close(call, variable);
        PyErr_Restore(type, value, tb); /* the app's exception, untouched */
    }
    else {
        db_close(call, variable);
    }
done:
    Py_XDECREF(call);
    Py_XDECREF(span);
    Py_XDECREF(mark);
    Py_XDECREF(kind);
    Py_XDECREF(tracer);
    Py_XDECREF(found);
    Py_XDECREF(parent);
    Py_XDECREF(decided);
    Py_XDECREF(variable);
    return result;
}

PyDoc_STRVAR(register_db_call_doc,
"register_db_call(db_globals, api_globals, spans_globals, call_cls, handle_cls, target_cls, not_handled) -> bool\n\n"
"Makes db_call work: autotrace.db's DbCall (its slots span, context, _token, _ended on\n"
"handle_cls, SpanHandle; library, comment on call_cls) and Target (its slot _spans). False\n"
"when a slot is not an object slot.");

static PyObject *
sp_register_db_call(PyObject *module, PyObject *args)
{
    PyObject *db_dict, *api_dict, *spans_dict, *call_cls, *handle_cls, *target_cls, *not_handled;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O:register_db_call", &PyDict_Type, &db_dict, &PyDict_Type, &api_dict,
                          &PyDict_Type, &spans_dict, &PyType_Type, &call_cls, &PyType_Type, &handle_cls, &PyType_Type,
                          &target_cls, &not_handled)) {
        return NULL;
    }
    if (s_db_decided == NULL
        && (intern(&s_db_decided, "_decided") < 0 || intern(&s_db_client, "_CLIENT") < 0
            || intern(&s_db_tracer_names, "_tracer_names") < 0 || intern(&s_db_tracers, "tracers") < 0
            || intern(&s_db_in_call, "IN_DB_CALL") < 0 || intern(&s_db_compiled, "_compiled") < 0
            || intern(&s_db_fail, "fail") < 0 || intern(&s_db_report, "report") < 0 || intern(&s_db_end, "end") < 0)) {
        return NULL;
    }
    static const char *handle_names[4] = {"span", "context", "_token", "_ended"};
    static const char *call_names[2] = {"library", "comment"};
    Py_ssize_t offsets[6], spans_offset;
    for (int i = 0; i < 6; i++) {
        PyObject *name = PyUnicode_FromString(i < 4 ? handle_names[i] : call_names[i - 4]);
        if (name == NULL) {
            return NULL;
        }
        int ok = slot_offset(i < 4 ? handle_cls : call_cls, name, &offsets[i]);
        Py_DECREF(name);
        if (!ok) {
            Py_RETURN_FALSE;
        }
    }
    PyObject *name = PyUnicode_FromString("_spans");
    int ok = name != NULL && slot_offset(target_cls, name, &spans_offset);
    Py_XDECREF(name);
    if (!ok || !PyType_IsSubtype((PyTypeObject *)call_cls, (PyTypeObject *)handle_cls)) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    memcpy(db_call_offsets, offsets, sizeof(offsets));
    db_spans_offset = spans_offset;
    Py_XSETREF(db_globals, Py_NewRef(db_dict));
    Py_XSETREF(db_api_dict, Py_NewRef(api_dict));
    Py_XSETREF(db_spans_dict, Py_NewRef(spans_dict));
    Py_XSETREF(db_not_handled, Py_NewRef(not_handled));
    Py_XSETREF(db_target_type, (PyTypeObject *)Py_NewRef(target_cls));
    Py_XSETREF(db_call_type, (PyTypeObject *)Py_NewRef(call_cls));
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"configure", sp_configure, METH_VARARGS, configure_doc},
    {"encode_light", sp_encode_light, METH_O, encode_light_doc},
    {"register_light_class", sp_register_light_class, METH_O, register_light_class_doc},
    {"encode_light_common", sp_encode_light_common, METH_O, encode_light_common_doc},
    {"count_end", sp_count_end, METH_O, count_end_doc},
    {"join_spans", (PyCFunction)(void (*)(void))sp_join_spans, METH_FASTCALL, join_spans_doc},
    {"ended", sp_ended, METH_NOARGS, ended_doc},
    {"register_light_start", sp_register_light_start, METH_VARARGS, register_light_start_doc},
    {"start_light", (PyCFunction)(void (*)(void))sp_start_light, METH_FASTCALL, start_light_doc},
    {"with_span", (PyCFunction)(void (*)(void))sp_with_span, METH_FASTCALL, with_span_doc},
    {"start_attached", (PyCFunction)(void (*)(void))sp_start_attached, METH_FASTCALL, start_attached_doc},
    {"register_handle", sp_register_handle, METH_VARARGS, register_handle_doc},
    {"start_handle", (PyCFunction)(void (*)(void))sp_start_handle, METH_FASTCALL | METH_KEYWORDS, start_handle_doc},
    {"new_span", (PyCFunction)(void (*)(void))sp_new_span, METH_FASTCALL | METH_KEYWORDS, new_span_doc},
    {"db_call", (PyCFunction)(void (*)(void))sp_db_call, METH_FASTCALL, db_call_doc},
    {"register_db_call", sp_register_db_call, METH_VARARGS, register_db_call_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "autotrace._speedups",
    "The light span's OTLP encoding and queueing in C (optional; autotrace.otlp_encode is the reference).",
    -1, /* global state: configured once per process */
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

static int
intern(PyObject **slot, const char *name)
{
    *slot = PyUnicode_InternFromString(name);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (intern(&s_context, "_context") < 0 || intern(&s_parent, "_parent") < 0 || intern(&s_name, "_name") < 0
        || intern(&s_kind, "_kind") < 0 || intern(&s_start_time, "_start_time") < 0
        || intern(&s_end_time, "_end_time") < 0 || intern(&s_attributes, "_attributes") < 0
        || intern(&s_events, "_events") < 0 || intern(&s_links, "_links") < 0 || intern(&s_status, "_status") < 0
        || intern(&s_description, "description") < 0 || intern(&s_status_code, "status_code") < 0
        || intern(&s_resource, "_resource") < 0 || intern(&s_scope, "_instrumentation_scope") < 0
        || intern(&s_shutdown, "_shutdown") < 0 || intern(&s_lock, "_lock") < 0 || intern(&s_queue, "_queue") < 0
        || intern(&s_bytes, "_bytes") < 0 || intern(&s_max_queue_size, "_max_queue_size") < 0
        || intern(&s_max_queue_bytes, "_max_queue_bytes") < 0 || intern(&s_max_batch_size, "_max_batch_size") < 0
        || intern(&s_max_batch_bytes, "_max_batch_bytes") < 0 || intern(&s_acquire, "acquire") < 0
        || intern(&s_release, "release") < 0 || intern(&s_append, "append") < 0
        || intern(&s_rest, "_light_end_rest") < 0 || intern(&s_tracer_config, "_tracer_config") < 0
        || intern(&s_is_enabled, "is_enabled") < 0 || intern(&s_span_processors, "_span_processors") < 0
        || intern(&s_resource_pub, "resource") < 0 || intern(&s_pid, "pid") < 0
        || intern(&s_app_provider, "_app_provider") < 0 || intern(&s_after_end, "_after_end") < 0
        || intern(&s_immutable, "_immutable") < 0 || intern(&s_fast, "fast") < 0 || intern(&s_span_key_name, "SPAN_KEY") < 0
        || intern(&s_variable, "_variable") < 0 || intern(&s_loaded, "loaded") < 0
        || intern(&s_suppress, "SUPPRESS_INSTRUMENTATION") < 0 || intern(&s_tracers, "tracers") < 0
        || intern(&s_reset_current, "reset_current") < 0 || intern(&s_detach, "detach") < 0
        || intern(&s_report, "report") < 0 || intern(&s_end, "end") < 0) {
        return NULL;
    }
    PyObject *module = PyType_Ready(&QueueStateType) < 0 ? NULL : PyModule_Create(&module_def);
    Py_INCREF(&QueueStateType);
    if (module != NULL && PyModule_AddObject(module, "QueueState", (PyObject *)&QueueStateType) < 0) {
        Py_DECREF(&QueueStateType);
        Py_CLEAR(module);
    }
    return module;
}
