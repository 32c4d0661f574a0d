/* The load's row checker and column builder in C: what loader/columns.py's
 * ColumnBuilder does with a snapshot row in the plain form, without a Python frame.
 *
 * plain(row, line) takes one parsed row (the dict orjson made) and returns
 * (entry, subjects, exemptions), exactly the values _plain returns, or None
 * whenever it is not sure: a value with white space at either end, an ID
 * that is not already canonical, a date not yet in listfile._DAYS, any
 * unexpected type, a key that is none of listfile's fields (ENTRY_FIELDS,
 * SUBJECT_FIELDS, RELATED_FIELDS). None sends the row on to _plain itself, and from there to
 * parse_entry, so this file never decides that a row is bad and never words
 * an error: it only takes the rows it can take whole. tests/test_loader.py
 * holds it to _plain on every field of a row made odd in many ways.
 *
 * Columns is a builder's columns: take(row, line) is plain() with the row
 * stored at once (hashed, masked, encoded into growing buffers), and
 * put(entry, subjects, exemptions) stores a row the Python code checked, so
 * every row of a load goes into the columns by the same code. columns() hands
 * them over as the bytes ColumnBuilder's own columns would hold.
 *
 * Keyer makes SubjectKeyer's keys: BLAKE2b (the reference code in loader/blake2/,
 * included below) with the secret's key block compressed once. Columns keys its rows
 * with one, and the server's checks key their subjects with one (columns.CompiledKeyer);
 * columns.py compares one key of each kind with the Python keyer's before either is
 * used.
 *
 * subject_fields(...) is the other end of a load: the subject hashes load --redis
 * writes (publish_redis._compiled_fields), each key's matches as the JSON that
 * orjson.dumps makes of encode_match's lists, read from the base's columns a key
 * at a time; tests/test_rowcheck.py holds it to the Python path byte for byte. Its
 * exemptions are JSON by key row: those naming that key's person (a match carries
 * its own subject's only), and an organisation's entry names the organisation in
 * every match, its debtor's too (index_redis.encode_match says why).
 *
 * configure(...) hands it the tables it shares with the Python code (the
 * enums' look-ups, the dates seen, the province codes, the birth dates, the
 * fields a row may hold), so the two can never disagree about them. SOURCE_DIGEST is the digest of this
 * file as setup.py compiled it: loader/columns.py does not use a build older
 * than the source beside it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

#include "blake2/blake2b-ref.c" /* one unit: its functions stay local to this module */

#ifndef SOURCE_DIGEST
#define SOURCE_DIGEST ""
#endif

/* tables from configure(): owned references, NULL until then */
static PyObject *LIST_TYPES, *STATUSES, *ACTIVE, *ROLES, *ID_TYPES, *RESIDENT;
static PyObject *DAYS, *DEBTOR, *NO_END, *BIRTH_DATES, *ZERO, *SEP, *EMPTY;
static PyObject *LOADS, *DECODE_ERROR; /* orjson.loads and orjson.JSONDecodeError */
/* the fields of listfile.ENTRY_FIELDS, SUBJECT_FIELDS and RELATED_FIELDS that check() does
 * not read, as lists of str (configure()): a row's, a person's subject's, an
 * organisation's, a related person's */
static PyObject *ENTRY_OTHERS, *PERSON_OTHERS, *ORGANIZATION_OTHERS, *RELATED_OTHERS;
static char PROVINCE[100];

/* The rows' field names check() looks up: interned at first, then the very key objects
 * the rows hold where they are equal (adopt()). */
enum { F_ENTRY_ID, F_LIST_TYPE, F_STATUS, F_SUBJECT, F_TYPE, F_NAME, F_USCC, F_ID_TYPE,
       F_ID_NUMBER, F_RELATED, F_ROLE, F_EXEMPTIONS, F_PUBLISHED_ON, F_VALID_UNTIL, F_FILED_ON,
       F_CASE_NUMBER, F_COURT, N_KEYS };
static PyObject *KEY[N_KEYS];
#define K_ENTRY_ID KEY[F_ENTRY_ID]
#define K_LIST_TYPE KEY[F_LIST_TYPE]
#define K_STATUS KEY[F_STATUS]
#define K_SUBJECT KEY[F_SUBJECT]
#define K_TYPE KEY[F_TYPE]
#define K_NAME KEY[F_NAME]
#define K_USCC KEY[F_USCC]
#define K_ID_TYPE KEY[F_ID_TYPE]
#define K_ID_NUMBER KEY[F_ID_NUMBER]
#define K_RELATED KEY[F_RELATED]
#define K_ROLE KEY[F_ROLE]
#define K_EXEMPTIONS KEY[F_EXEMPTIONS]
#define K_PUBLISHED_ON KEY[F_PUBLISHED_ON]
#define K_VALID_UNTIL KEY[F_VALID_UNTIL]
#define K_FILED_ON KEY[F_FILED_ON]
#define K_CASE_NUMBER KEY[F_CASE_NUMBER]
#define K_COURT KEY[F_COURT]
static PyObject *S_PERSON, *S_ORGANIZATION;

/* Set when a row is not plain: the caller returns None. */
#define NOT_SURE 0
#define SURE 1
#define FAILED -1 /* a Python error is set (memory): the caller returns NULL */

static PyObject *get(PyObject *dict, PyObject *key) {
    /* borrowed, NULL when absent. The rows come from orjson or the CSV reader: exact
     * dicts with exact str keys, so a look-up cannot fail or run Python code. */
    return PyDict_GetItemWithError(dict, key);
}

/* SURE when every key of the dict `obj` is a field: `read` of its keys are fields check()
 * looked up and found, and the rest must be among `others`, the fields it does not read
 * (listfile's, less those), looked up only while some keys are unaccounted for. NOT_SURE
 * when one is none of them (parse_entry refuses the row naming it: listfile._known),
 * FAILED with an error set. Counting costs a row a few look-ups (by adopted keys, cheap);
 * going over its keys with PyDict_Next made plain() a quarter dearer. */
static int only_fields(PyObject *obj, Py_ssize_t read, PyObject *others) {
    Py_ssize_t size = PyDict_GET_SIZE(obj);
    for (Py_ssize_t i = 0; read < size && i < PyList_GET_SIZE(others); i++) {
        if (get(obj, PyList_GET_ITEM(others, i)) != NULL) read++;
        else if (PyErr_Occurred()) return FAILED;
    }
    return read == size ? SURE : NOT_SURE;
}

/* Each of `names` (owned str) that equals a key of the dict `obj` is replaced by that
 * key object: any str equal to the name finds the same value. A dict finds the very
 * object it holds without comparing strings (an orjson dict compares an equal string
 * through __eq__, as a general table), and orjson hands out the same key object row
 * after row (its key cache): with the adopted keys plain() costs less than before it
 * counted the keys. */
static void adopt(PyObject *obj, PyObject **names, Py_ssize_t n) {
    Py_ssize_t at = 0;
    PyObject *key, *value;
    while (PyDict_Next(obj, &at, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) continue;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (names[i] == key) break;
            if (PyUnicode_GET_LENGTH(names[i]) == PyUnicode_GET_LENGTH(key) &&
                PyUnicode_Compare(names[i], key) == 0) {
                Py_SETREF(names[i], Py_NewRef(key));
                break;
            }
        }
    }
}

/* Rows checked until the next adopt(): the first row, then one in 4,096 (orjson's cache
 * may hand out new key objects for a key, a CSV's rows have new ones each). */
static unsigned int ADOPT_IN;

static void adopt_keys(PyObject *obj, PyObject *others) {
    adopt(obj, KEY, N_KEYS);
    adopt(obj, PySequence_Fast_ITEMS(others), PyList_GET_SIZE(others));
}

/* How many of `n` values a row's look-ups gave are there (not NULL). */
static Py_ssize_t present(PyObject *const *values, int n) {
    Py_ssize_t found = 0;
    for (int i = 0; i < n; i++) found += values[i] != NULL;
    return found;
}

/* A str that str.strip() leaves alone, that is not empty and holds no control character
 * (listfile._CONTROL, which Python refuses): the value itself. */
static int plain_text(PyObject *v) {
    if (v == NULL || !PyUnicode_CheckExact(v)) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    if (n == 0) return 0;
    int kind = PyUnicode_KIND(v);
    const void *data = PyUnicode_DATA(v);
    if (Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, 0)) ||
        Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, n - 1)))
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) return 0;
    }
    return 1;
}

/* A value listfile takes as left out (its default, or no items): absent, None or "".
 * Any other value must be of the field's type; {}, 0 or false is a mistake, not "none". */
static int absent(PyObject *v) {
    return v == NULL || v == Py_None ||
           (PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) == 0);
}

/* A list field with no items: left out, or [] (listfile._listed). */
static int no_items(PyObject *v) {
    return absent(v) || (PyList_CheckExact(v) && PyList_GET_SIZE(v) == 0);
}

/* table[v] for an exact str v, borrowed; NULL when v is not a str or not a key */
static PyObject *choice(PyObject *table, PyObject *v) {
    if (v == NULL || !PyUnicode_CheckExact(v)) return NULL;
    return PyDict_GetItemWithError(table, v);
}

/* Today's day number in China time (UTC+8): domain.model.china_day(time.time()). */
static long china_today(void) {
    time_t now = time(NULL);
    return (long)(((long long)now + 8 * 3600) / 86400);
}

/* listfile.EARLIEST_DAY, 2000-01-01: a published_on or valid_until before it but
 * 1970-01-01 (day 0, no date) is an export's placeholder, a bad row (listfile._date).
 * _date never keeps such a day in _DAYS, so day() below finds none; check() still
 * declines one, should it. tests/test_placeholder_dates.py holds the two days equal. */
#define EARLIEST_DAY 10957

/* A date field: the day number listfile._DAYS holds for it (borrowed), or `missing`
 * when the row leaves it out, null or "" (what _date returns then). NULL: not sure. */
static PyObject *day(PyObject *v, PyObject *missing) {
    if (v == NULL || v == Py_None) return missing;
    if (!PyUnicode_CheckExact(v)) return NULL;
    if (PyUnicode_GET_LENGTH(v) == 0) return missing;
    return PyDict_GetItemWithError(DAYS, v);
}

/* GB 11643: 17 digits and a good check character, a province in use, a birth date in
 * identity._BIRTH_DATES. What normalize_resident_id returns unchanged. */
static int canonical_resident_id(PyObject *s) {
    static const int weights[17] = {7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2};
    if (!PyUnicode_IS_ASCII(s) || PyUnicode_GET_LENGTH(s) != 18) return NOT_SURE;
    const Py_UCS1 *c = PyUnicode_1BYTE_DATA(s);
    int sum = 0;
    for (int i = 0; i < 17; i++) {
        if (c[i] < '0' || c[i] > '9') return NOT_SURE;
        sum += (c[i] - '0') * weights[i];
    }
    if (c[17] != "10X98765432"[sum % 11]) return NOT_SURE;
    if (!PROVINCE[(c[0] - '0') * 10 + (c[1] - '0')]) return NOT_SURE;
    PyObject *birth = PyUnicode_FromStringAndSize((const char *)c + 6, 8);
    if (birth == NULL) return FAILED;
    int found = PySet_Contains(BIRTH_DATES, birth);
    Py_DECREF(birth);
    return found < 0 ? FAILED : found;
}

/* 5 to 20 ASCII capitals and digits: what normalize_document returns unchanged. */
static int canonical_document(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (!PyUnicode_IS_ASCII(s) || n < 5 || n > 20) return NOT_SURE;
    const Py_UCS1 *c = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!((c[i] >= '0' && c[i] <= '9') || (c[i] >= 'A' && c[i] <= 'Z'))) return NOT_SURE;
    return SURE;
}

/* GB 32100, canonical form and check character: columns.plain_uscc. */
static int canonical_uscc(PyObject *s) {
    static const char alphabet[] = "0123456789ABCDEFGHJKLMNPQRTUWXY";
    static const int weights[17] = {1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28};
    if (!PyUnicode_IS_ASCII(s) || PyUnicode_GET_LENGTH(s) != 18) return NOT_SURE;
    const Py_UCS1 *c = PyUnicode_1BYTE_DATA(s);
    int sum = 0;
    for (int i = 0; i < 17; i++) {
        const char *at = c[i] ? strchr(alphabet, c[i]) : NULL;
        if (at == NULL) return NOT_SURE;
        if (i >= 2 && i < 8 && !(c[i] >= '0' && c[i] <= '9')) return NOT_SURE;
        sum += (int)(at - alphabet) * weights[i];
    }
    return c[17] == alphabet[(31 - sum % 31) % 31];
}

/* columns._person: (role, name, id type, number), new reference; NULL and no error
 * set when not sure. `others`: the fields of such an object it does not read, beside
 * the one key its caller read (the subject's type, the related person's role). */
static PyObject *person(PyObject *obj, PyObject *role, PyObject *others) {
    if (!PyDict_CheckExact(obj)) return NULL;
    PyObject *kind = get(obj, K_ID_TYPE);
    PyObject *id_type = absent(kind) ? RESIDENT : choice(ID_TYPES, kind);
    PyObject *number = get(obj, K_ID_NUMBER);
    PyObject *name = get(obj, K_NAME);
    if (id_type == NULL || !plain_text(number) || !plain_text(name)) return NULL;
    int known = only_fields(obj, 3 + (kind != NULL), others); /* the caller's key, name, number */
    if (known != SURE) return NULL; /* FAILED: its error is set */
    /* a document number of 15 or 18 characters may be a resident ID under the wrong
     * type, one of 11 a Home Return Permit's old form and one of 10 a Taiwan permit's,
     * which listfile.as_resident keys as the resident ID or the card, and one of 15 to
     * 19 a resident ID with a keying slip, which it refuses: Python decides */
    Py_ssize_t length = PyUnicode_GET_LENGTH(number);
    if (id_type != RESIDENT && ((length >= 15 && length <= 19) || length == 11 || length == 10))
        return NULL;
    int ok = id_type == RESIDENT ? canonical_resident_id(number) : canonical_document(number);
    if (ok != SURE) return NULL;
    return PyTuple_Pack(4, role, name, id_type, number);
}

#define BAIL(status) \
    do {             \
        result = (status); \
        goto done;   \
    } while (0)

static int add_subject(PyObject *subjects, PyObject *subject) {
    if (subject == NULL) return PyErr_Occurred() ? FAILED : NOT_SURE;
    int status = PyList_Append(subjects, subject) < 0 ? FAILED : SURE;
    Py_DECREF(subject);
    return status;
}

/* A row as check() finds it: borrowed references into the row (or the tables), and
 * the two values it makes, owned. */
typedef struct {
    PyObject *entry_id, *list_type, *status, *published, *valid_until, *court, *case_number,
        *organization;
    PyObject *subjects;   /* list of (role, name, id type, number), owned */
    PyObject *exemptions; /* the empty tuple (a row with exemptions is not plain), owned */
} Row;

/* What _plain makes of a row: SURE with *row filled in (the caller releases its
 * subjects and exemptions), NOT_SURE, or FAILED with a Python error set. */
static int check(PyObject *obj, Row *row) {
    PyObject *subjects = NULL, *exemptions = NULL;
    int result = SURE;

    int adopting = ADOPT_IN-- == 0;
    if (adopting) {
        ADOPT_IN = 4095;
        adopt_keys(obj, ENTRY_OTHERS);
    }
    PyObject *entry_id = get(obj, K_ENTRY_ID);
    PyObject *list_type_value = get(obj, K_LIST_TYPE);
    PyObject *list_type = choice(LIST_TYPES, list_type_value);
    PyObject *status_value = get(obj, K_STATUS);
    PyObject *status = absent(status_value) ? ACTIVE : choice(STATUSES, status_value);
    PyObject *subject = get(obj, K_SUBJECT);
    if (!plain_text(entry_id) || list_type == NULL || status == NULL || subject == NULL ||
        !PyDict_CheckExact(subject))
        BAIL(NOT_SURE);
    PyObject *people = get(obj, K_RELATED);
    int no_people = no_items(people);
    if (adopting) {
        adopt_keys(subject, PERSON_OTHERS);
        adopt_keys(subject, ORGANIZATION_OTHERS);
    }
    PyObject *kind = get(subject, K_TYPE);
    PyObject *organization = EMPTY; /* a person's entry has no organisation name */
    subjects = PyList_New(0);
    if (subjects == NULL) BAIL(FAILED);
    if (kind != NULL && PyUnicode_CheckExact(kind) &&
        PyUnicode_Compare(kind, S_PERSON) == 0) {
        if (!no_people) BAIL(NOT_SURE);
        int added = add_subject(subjects, person(subject, DEBTOR, PERSON_OTHERS));
        if (added != SURE) BAIL(added);
    } else if (kind != NULL && PyUnicode_CheckExact(kind) &&
               PyUnicode_Compare(kind, S_ORGANIZATION) == 0) {
        organization = get(subject, K_NAME);
        PyObject *uscc = get(subject, K_USCC);
        if (!plain_text(organization) || !plain_text(uscc)) BAIL(NOT_SURE);
        int known = only_fields(subject, 3, ORGANIZATION_OTHERS); /* type, name, uscc */
        if (known != SURE) BAIL(known);
        int ok = canonical_uscc(uscc);
        if (ok != SURE) BAIL(ok);
        int added = add_subject(subjects, PyTuple_Pack(4, DEBTOR, organization, Py_None, uscc));
        if (added != SURE) BAIL(added);
        if (!no_people) {
            if (!PyList_CheckExact(people)) BAIL(NOT_SURE);
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(people); i++) {
                PyObject *p = PyList_GET_ITEM(people, i);
                if (!PyDict_CheckExact(p)) BAIL(NOT_SURE);
                if (adopting && i == 0) adopt_keys(p, RELATED_OTHERS);
                PyObject *role = choice(ROLES, get(p, K_ROLE));
                if (role == NULL) BAIL(PyErr_Occurred() ? FAILED : NOT_SURE);
                added = add_subject(subjects, person(p, role, RELATED_OTHERS));
                if (added != SURE) BAIL(added);
            }
        }
    } else {
        BAIL(NOT_SURE);
    }

    /* an exemption names the person it covers, to be found among the entry's subjects
     * and keyed (listfile.exempted_in): rare, so such a row is left to the Python code */
    PyObject *exemptions_value = get(obj, K_EXEMPTIONS);
    if (!no_items(exemptions_value)) BAIL(NOT_SURE);
    exemptions = PyTuple_New(0);
    if (exemptions == NULL) BAIL(FAILED);

    PyObject *read[] = {entry_id, list_type_value, status_value, subject, people,
                        exemptions_value, get(obj, K_PUBLISHED_ON), get(obj, K_VALID_UNTIL),
                        get(obj, K_FILED_ON), get(obj, K_CASE_NUMBER), get(obj, K_COURT)};
    PyObject *published = day(read[6], ZERO);
    PyObject *valid_until = day(read[7], NO_END);
    PyObject *filed = day(read[8], ZERO);
    PyObject *case_number = read[9];
    PyObject *court = read[10];
    if (published == NULL || valid_until == NULL || filed == NULL || !plain_text(case_number) ||
        !plain_text(court))
        BAIL(PyErr_Occurred() ? FAILED : NOT_SURE);
    /* a key that is none of the fields: parse_entry names it */
    int known = only_fields(obj, present(read, sizeof read / sizeof *read), ENTRY_OTHERS);
    if (known != SURE) BAIL(known);
    long first = PyLong_AsLong(published);
    long last = PyLong_AsLong(valid_until);
    if (last == 0) { /* 1970-01-01, like no date, is no end (parse_entry) */
        valid_until = NO_END;
        last = PyLong_AsLong(NO_END);
    }
    if (PyErr_Occurred()) BAIL(FAILED); /* _DAYS holds small ints: never */
    /* an export's placeholder (1900-01-01): parse_entry refuses it, naming the field */
    if ((first && first < EARLIEST_DAY) || last < EARLIEST_DAY) BAIL(NOT_SURE);
    /* published days after today in China (listfile.PUBLISHED_AHEAD_DAYS): parse_entry
     * refuses it. A day number compared, time() read once a row (a vDSO call) */
    if (first > china_today() + 1) BAIL(NOT_SURE);
    if (first && last < first) BAIL(NOT_SURE);

    *row = (Row){entry_id, list_type, status, published, valid_until, court, case_number,
                 organization, subjects, exemptions};
    return SURE;

done:
    Py_XDECREF(subjects);
    Py_XDECREF(exemptions);
    if (result == SURE || (result == NOT_SURE && PyErr_Occurred())) result = FAILED;
    return result;
}

static PyObject *plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "plain(row, line)");
        return NULL;
    }
    if (DAYS == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (!PyDict_CheckExact(args[0])) Py_RETURN_NONE;
    Row r;
    int status = check(args[0], &r);
    if (status == FAILED) return NULL;
    if (status == NOT_SURE) Py_RETURN_NONE;
    PyObject *out = NULL, *entry = NULL, *text = NULL;
    PyObject *joined = PyTuple_Pack(3, r.entry_id, r.case_number, r.organization);
    if (joined != NULL) text = PyUnicode_Join(SEP, joined);
    if (text != NULL)
        entry = PyTuple_Pack(8, r.entry_id, args[1], r.list_type, r.status, r.published,
                             r.valid_until, r.court, text);
    if (entry != NULL) out = PyTuple_Pack(3, entry, r.subjects, r.exemptions);
    Py_XDECREF(joined);
    Py_XDECREF(text);
    Py_XDECREF(entry);
    Py_DECREF(r.subjects);
    Py_DECREF(r.exemptions);
    return out;
}

/* ---- Columns: a builder's columns, in buffers that grow ---------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

static int grow(Buf *b, size_t n) {
    if (b->len + n <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + n) cap *= 2;
    char *data = PyMem_RawRealloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int put_bytes(Buf *b, const void *p, size_t n) {
    if (grow(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* the columns in the order columns() names them (ColumnBuilder's attributes) */
enum { KEYS, M_ENTRY, M_ROLE, M_NAME, M_MASK, E_IDH, E_LINE, E_TYPE, E_STATUS, E_LISTED,
       E_VALID, E_COURT, TEXT_ENDS, TEXT, N_COLUMNS };
static const char *COLUMN_NAMES[N_COLUMNS] = {
    "keys", "m_entry", "m_role", "m_name", "m_mask", "e_idh", "e_line", "e_type",
    "e_status", "e_listed", "e_valid", "e_court", "text_ends", "text"};

#define MAX_TAGS 16

/* SubjectKeyer's keys: a BLAKE2b state per identity kind (its tag not yet fed in) and
 * one for names, each with the secret's key block compressed. */
typedef struct {
    PyObject_HEAD
    PyObject *tags; /* id type (None: USCC) -> tag bytes */
    Py_ssize_t n_tags;
    PyObject *tag_type[MAX_TAGS]; /* borrowed from tags */
    blake2b_state by_tag[MAX_TAGS], name;
} Keyer;

static PyTypeObject KeyerType;
static int keyer_ready(Keyer *self);

typedef struct {
    PyObject_HEAD
    Buf col[N_COLUMNS];
    int finished, keeping, busy; /* busy: storing a row (a callback may not re-enter) */
    Py_ssize_t entries, taken, width;
    PyObject *courts;      /* court -> number, in order of first appearance */
    PyObject *exemptions;  /* entry row -> its (subject key, Exemption) pairs */
    Keyer *keys;
    PyObject *name_key_of; /* name -> 8 bytes: names that are not plain (normalize_name) */
    PyObject *mask_of;     /* number -> str: identity.mask_id, for what the C does not mask */
    blake2b_state entry_id;
} Columns;

/* hashlib.blake2b(key=key, digest_size=size, person=person), with the key block already
 * compressed: what follows it is the message. Every message hashed from such a state
 * is non-empty (a tag and a number, a name), so the key block is never the last one. */
static int keyed_state(blake2b_state *S, Py_buffer *key, Py_buffer *person, size_t size) {
    if (key->len < 1 || key->len > BLAKE2B_KEYBYTES || person->len > BLAKE2B_PERSONALBYTES) {
        PyErr_SetString(PyExc_ValueError, "a key of 1-64 bytes and a person of at most 16");
        return -1;
    }
    blake2b_param P;
    memset(&P, 0, sizeof P);
    P.digest_length = (uint8_t)size;
    P.key_length = (uint8_t)key->len;
    P.fanout = 1;
    P.depth = 1;
    memcpy(P.personal, person->buf, person->len);
    blake2b_init_param(S, &P);
    uint8_t block[BLAKE2B_BLOCKBYTES] = {0};
    memcpy(block, key->buf, key->len);
    blake2b_update(S, block, BLAKE2B_BLOCKBYTES);
    /* one more byte makes blake2b_update compress the buffered key block; the byte is
     * then dropped, leaving nothing buffered */
    blake2b_update(S, block, 1);
    S->buflen = 0;
    secure_zero_memory(block, sizeof block);
    return 0;
}

static void digest(const blake2b_state *from, const void *a, size_t na, const void *b,
                   size_t nb, uint8_t *out) {
    blake2b_state S = *from;
    blake2b_update(&S, a, na);
    blake2b_update(&S, b, nb);
    blake2b_final(&S, out, S.outlen);
}

static const char *utf8(PyObject *s, Py_ssize_t *n, const char *what) {
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "%s must be str, not %.100s", what, Py_TYPE(s)->tp_name);
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(s, n);
}

/* SubjectKeyer.subject_key(id_type, number), 16 bytes big-endian */
static int subject_key(Keyer *self, PyObject *id_type, PyObject *number, uint8_t *out) {
    Py_ssize_t i = 0;
    while (i < self->n_tags && self->tag_type[i] != id_type) i++;
    if (i == self->n_tags) { /* not one of the keys themselves: an equal one, or none */
        for (i = 0; i < self->n_tags; i++) {
            int equal = PyObject_RichCompareBool(self->tag_type[i], id_type, Py_EQ);
            if (equal < 0) return -1;
            if (equal) break;
        }
        if (i == self->n_tags) {
            PyErr_SetObject(PyExc_KeyError, id_type);
            return -1;
        }
    }
    Py_ssize_t n;
    const char *text = utf8(number, &n, "an id number");
    if (text == NULL) return -1;
    digest(&self->by_tag[i], text, n, "", 0, out); /* the tag is in the state already */
    return 0;
}

/* identity._PLAIN_NAME: one or more of U+4E00-U+9FFF and U+00B7, already normal */
static int plain_name(PyObject *name) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    int kind = PyUnicode_KIND(name);
    const void *data = PyUnicode_DATA(name);
    if (n == 0 || kind == PyUnicode_4BYTE_KIND) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c != 0xB7 && (c < 0x4E00 || c > 0x9FFF)) return 0;
    }
    return 1;
}

/* SubjectKeyer.name_key of a name already normal, 8 bytes big-endian (0 stays for no
 * name: a digest of zeros is 1) */
static void name_digest(Keyer *self, const char *text, Py_ssize_t n, uint8_t *out) {
    static const uint8_t zero[8] = {0};
    digest(&self->name, text, n, "", 0, out);
    if (memcmp(out, zero, 8) == 0) out[7] = 1;
}

/* ColumnBuilder._name_key(name), 8 bytes big-endian */
static int name_key(Columns *self, PyObject *name, uint8_t *out) {
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "a name must be str, not %.100s", Py_TYPE(name)->tp_name);
        return -1;
    }
    if (PyUnicode_CheckExact(name) && plain_name(name)) {
        Py_ssize_t n;
        const char *text = PyUnicode_AsUTF8AndSize(name, &n);
        if (text == NULL) return -1;
        name_digest(self->keys, text, n, out);
        return 0;
    }
    PyObject *key = PyObject_CallOneArg(self->name_key_of, name);
    if (key == NULL) return -1;
    int ok = PyBytes_Check(key) && PyBytes_GET_SIZE(key) == 8;
    if (ok) memcpy(out, PyBytes_AS_STRING(key), 8);
    else PyErr_SetString(PyExc_TypeError, "name_key must return 8 bytes");
    Py_DECREF(key);
    return ok ? 0 : -1;
}

/* identity.mask_id(number) as ColumnBuilder._flush packs it: its UTF-8, padded with
 * spaces or cut to `width` bytes. Masked here when the number is ASCII and fits. */
static int put_mask(Columns *self, PyObject *number) {
    Buf *b = &self->col[M_MASK];
    Py_ssize_t width = self->width;
    if (PyUnicode_CheckExact(number) && PyUnicode_IS_ASCII(number) &&
        PyUnicode_GET_LENGTH(number) <= width) {
        if (grow(b, width) < 0) return -1;
        char *at = b->data + b->len;
        const char *c = (const char *)PyUnicode_1BYTE_DATA(number);
        Py_ssize_t n = PyUnicode_GET_LENGTH(number);
        /* no birth date shown: a first-generation card's 6 digits, 16 or 17 characters'
         * every place an 18-digit number's 8 could be (identity.mask_id) */
        Py_ssize_t head = n >= 15 ? 6 : n > 4 ? 2 : 0;
        Py_ssize_t tail = n >= 18 ? 4 : n == 15 ? 3 : n > 15 ? n - 14 : n > 4 ? 2 : 0;
        memcpy(at, c, head);
        memset(at + head, '*', n - head - tail);
        memcpy(at + n - tail, c + n - tail, tail);
        memset(at + n, ' ', width - n);
    } else { /* the callback first: the buffer is touched only after it returns */
        PyObject *mask = PyObject_CallOneArg(self->mask_of, number);
        if (mask == NULL) return -1;
        Py_ssize_t n;
        const char *text = utf8(mask, &n, "a mask");
        if (text != NULL && grow(b, width) == 0) {
            char *at = b->data + b->len;
            memcpy(at, text, n < width ? n : width);
            if (n < width) memset(at + n, ' ', width - n);
        } else {
            text = NULL;
        }
        Py_DECREF(mask);
        if (text == NULL) return -1;
    }
    b->len += width;
    return 0;
}

static int put_int(Buf *b, PyObject *v, long long low, long long high, int size,
                   const char *what) {
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (x < low || x > high) {
        PyErr_Format(PyExc_OverflowError, "%s out of range: %lld", what, x);
        return -1;
    }
    uint32_t u32 = (uint32_t)x;
    int32_t i32 = (int32_t)x;
    uint8_t u8 = (uint8_t)x;
    if (size == 1) return put_bytes(b, &u8, 1);
    if (low < 0) return put_bytes(b, &i32, 4);
    return put_bytes(b, &u32, 4);
}

/* One row into the columns: the entry, then each subject. The text is `text` when the
 * caller joined it, else entry_id \x1f case_number \x1f organisation. On an error every
 * column is left as it was. */
static int store_row(Columns *self, const Row *r, PyObject *line, PyObject *text) {
    size_t mark[N_COLUMNS];
    for (int i = 0; i < N_COLUMNS; i++) mark[i] = self->col[i].len;
    int new_court = 0;
    Buf *c = self->col;
    uint8_t key[16];
    Py_ssize_t n;
    const char *s = utf8(r->entry_id, &n, "entry_id");
    if (s == NULL) goto failed;
    digest(&self->entry_id, s, n, "", 0, key);
    if (put_bytes(&c[E_IDH], key, 8) < 0) goto failed;
    if (put_int(&c[E_LINE], line, 0, UINT32_MAX, 4, "a line number") < 0 ||
        put_int(&c[E_TYPE], r->list_type, 0, 255, 1, "a list type") < 0 ||
        put_int(&c[E_STATUS], r->status, 0, 255, 1, "a status") < 0 ||
        put_int(&c[E_LISTED], r->published, INT32_MIN, INT32_MAX, 4, "published_on") < 0 ||
        put_int(&c[E_VALID], r->valid_until, INT32_MIN, INT32_MAX, 4, "valid_until") < 0)
        goto failed;
    if (!PyUnicode_Check(r->court)) {
        PyErr_SetString(PyExc_TypeError, "court must be str");
        goto failed;
    }
    PyObject *number = PyDict_GetItemWithError(self->courts, r->court);
    if (number == NULL) {
        if (PyErr_Occurred()) goto failed;
        number = PyLong_FromSsize_t(PyDict_GET_SIZE(self->courts));
        int added = number == NULL ? -1 : PyDict_SetItem(self->courts, r->court, number);
        Py_XDECREF(number); /* the dict holds it */
        if (added < 0) goto failed;
        new_court = 1;
    }
    if (put_int(&c[E_COURT], number, 0, UINT32_MAX, 4, "a court number") < 0) goto failed;
    if (text != NULL) {
        if ((s = utf8(text, &n, "the entry's text")) == NULL || put_bytes(&c[TEXT], s, n) < 0)
            goto failed;
    } else {
        PyObject *parts[3] = {r->entry_id, r->case_number, r->organization};
        for (int i = 0; i < 3; i++) {
            if ((s = utf8(parts[i], &n, "a text field")) == NULL ||
                (i && put_bytes(&c[TEXT], "\x1f", 1) < 0) || put_bytes(&c[TEXT], s, n) < 0)
                goto failed;
        }
    }
    uint64_t end = c[TEXT].len;
    if (put_bytes(&c[TEXT_ENDS], &end, 8) < 0) goto failed;

    PyObject *subjects = PySequence_Fast(r->subjects, "subjects must be a sequence");
    if (subjects == NULL) goto failed;
    uint32_t row = (uint32_t)self->entries;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(subjects); i++) {
        PyObject *subject = PySequence_Fast_GET_ITEM(subjects, i);
        if (!PyTuple_Check(subject) || PyTuple_GET_SIZE(subject) != 4) {
            PyErr_SetString(PyExc_TypeError, "a subject is (role, name, id type, number)");
            goto failed_subjects;
        }
        if (put_bytes(&c[M_ENTRY], &row, 4) < 0 ||
            put_int(&c[M_ROLE], PyTuple_GET_ITEM(subject, 0), 0, 255, 1, "a role") < 0 ||
            name_key(self, PyTuple_GET_ITEM(subject, 1), key) < 0 ||
            put_bytes(&c[M_NAME], key, 8) < 0 ||
            subject_key(self->keys, PyTuple_GET_ITEM(subject, 2),
                        PyTuple_GET_ITEM(subject, 3), key) < 0 ||
            put_bytes(&c[KEYS], key, 16) < 0 || put_mask(self, PyTuple_GET_ITEM(subject, 3)) < 0)
            goto failed_subjects;
    }
    Py_DECREF(subjects);
    if (PyTuple_Check(r->exemptions) ? PyTuple_GET_SIZE(r->exemptions) > 0
                                     : PyObject_IsTrue(r->exemptions) != 0) {
        if (PyErr_Occurred()) goto failed;
        PyObject *at = PyLong_FromSsize_t(self->entries);
        int added = at == NULL ? -1 : PyDict_SetItem(self->exemptions, at, r->exemptions);
        Py_XDECREF(at);
        if (added < 0) goto failed;
    }
    self->entries++;
    return 0;

failed_subjects:
    Py_DECREF(subjects);
failed:
    for (int i = 0; i < N_COLUMNS; i++) self->col[i].len = mark[i];
    if (new_court) { /* numbered for this row only: gone with it */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (PyDict_DelItem(self->courts, r->court) < 0) PyErr_Clear();
        PyErr_Restore(type, value, traceback);
    }
    return -1;
}

static int store(Columns *self, const Row *r, PyObject *line, PyObject *text) {
    self->busy = 1; /* the name_key and mask callbacks may not use these columns */
    int stored = store_row(self, r, line, text);
    self->busy = 0;
    return stored;
}

static int usable(Columns *self) {
    if (self->keys == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Columns not initialised");
        return 0;
    }
    if (self->finished) {
        PyErr_SetString(PyExc_RuntimeError, "columns() already handed these columns over");
        return 0;
    }
    if (self->busy) { /* from the name_key or mask callback, in the middle of a row */
        PyErr_SetString(PyExc_RuntimeError, "Columns used while it stores a row");
        return 0;
    }
    return 1;
}

/* check()'s verdict for take() and feed(): an error it met (a value whose truth test
 * raised: no row from orjson has one) leaves the row to the Python code, as _plain's
 * TypeError leaves it to parse_entry, which words it. Only running out of memory is
 * an error here. */
static int sure(int status) {
    if (status == FAILED && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
        PyErr_Clear();
        return NOT_SURE;
    }
    return status;
}

/* feed(lines, start, first_line): lines[start:] parsed with orjson and taken while each
 * is a plain row (lines[i] is line first_line + i of the file); the index of the first
 * line not taken (len(lines) when all were), which the Python code then reads itself:
 * a blank line, bad JSON, anything but a plain row. */
/* One parsed row: checked and, while keeping, stored. SURE when taken, NOT_SURE when
 * left to the Python code, FAILED with an error set. */
static int take_row(Columns *self, PyObject *obj, PyObject *line) {
    if (!PyDict_CheckExact(obj)) return NOT_SURE;
    Row r;
    int status = sure(check(obj, &r));
    if (status != SURE) return status;
    int stored = self->keeping ? store(self, &r, line, NULL) : 0;
    Py_DECREF(r.subjects);
    Py_DECREF(r.exemptions);
    if (stored < 0) return FAILED;
    self->taken++;
    return SURE;
}

static PyObject *Columns_feed(Columns *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "feed(lines: list[bytes], start, first_line)");
        return NULL;
    }
    if (!usable(self)) return NULL;
    if (LOADS == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), first = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || first == -1) && PyErr_Occurred()) return NULL;
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < PyList_GET_SIZE(args[0]); i++) {
        PyObject *raw = PyList_GET_ITEM(args[0], i);
        PyObject *obj = PyObject_Vectorcall(LOADS, &raw, 1, NULL);
        if (obj == NULL) {
            if (!PyErr_ExceptionMatches(DECODE_ERROR)) return NULL;
            PyErr_Clear(); /* a blank line, or bad JSON: the Python code says which */
            break;
        }
        PyObject *line = PyLong_FromSsize_t(first + i);
        int status = line == NULL ? FAILED : take_row(self, obj, line);
        Py_XDECREF(line);
        Py_DECREF(obj);
        if (status == FAILED) return NULL;
        if (status == NOT_SURE) break;
    }
    return PyLong_FromSsize_t(i);
}

/* take(row, line): True when the row is plain and, while keeping, stored; else False */
static PyObject *Columns_take(Columns *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "take(row, line)");
        return NULL;
    }
    if (!usable(self)) return NULL;
    int status = take_row(self, args[0], args[1]);
    if (status == FAILED) return NULL;
    return PyBool_FromLong(status == SURE);
}

/* put(entry, subjects, exemptions): a row as ColumnBuilder stages it (_Staged) */
static PyObject *Columns_put(Columns *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) != 8) {
        PyErr_SetString(PyExc_TypeError, "put(entry: 8-tuple, subjects, exemptions)");
        return NULL;
    }
    if (!usable(self)) return NULL;
    PyObject *e = args[0];
    Row r = {PyTuple_GET_ITEM(e, 0), PyTuple_GET_ITEM(e, 2), PyTuple_GET_ITEM(e, 3),
             PyTuple_GET_ITEM(e, 4), PyTuple_GET_ITEM(e, 5), PyTuple_GET_ITEM(e, 6),
             NULL, NULL, args[1], args[2]};
    if (store(self, &r, PyTuple_GET_ITEM(e, 1), PyTuple_GET_ITEM(e, 7)) < 0) return NULL;
    Py_RETURN_NONE;
}

/* columns(): ({name: bytes}, courts, exemptions), once; the buffers are freed */
static PyObject *Columns_columns(Columns *self, PyObject *unused) {
    if (!usable(self)) return NULL;
    PyObject *out = PyDict_New();
    for (int i = 0; out != NULL && i < N_COLUMNS; i++) {
        PyObject *b = PyBytes_FromStringAndSize(self->col[i].data, self->col[i].len);
        if (b == NULL || PyDict_SetItemString(out, COLUMN_NAMES[i], b) < 0) Py_CLEAR(out);
        Py_XDECREF(b);
    }
    if (out == NULL) return NULL;
    PyObject *result = PyTuple_Pack(3, out, self->courts, self->exemptions);
    Py_DECREF(out);
    if (result == NULL) return NULL;
    self->finished = 1;
    for (int i = 0; i < N_COLUMNS; i++) {
        PyMem_RawFree(self->col[i].data);
        self->col[i] = (Buf){NULL, 0, 0};
    }
    return result;
}

static int Columns_init(Columns *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"keyer", "name_key", "mask", "width", NULL};
    PyObject *keyer, *name_key_of, *mask_of;
    Py_ssize_t width;
    if (self->keys != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Columns cannot be initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOn:Columns", names, &KeyerType, &keyer,
                                     &name_key_of, &mask_of, &width))
        return -1;
    if (DAYS == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return -1;
    }
    if (!keyer_ready((Keyer *)keyer)) return -1;
    if (width < 1 || width > 255) {
        PyErr_SetString(PyExc_ValueError, "a mask width of 1-255");
        return -1;
    }
    blake2b_init(&self->entry_id, 8); /* entry_id_hash: blake2b(digest_size=8) */
    self->courts = PyDict_New();
    self->exemptions = PyDict_New();
    if (self->courts == NULL || self->exemptions == NULL) return -1;
    Py_INCREF(keyer);
    self->keys = (Keyer *)keyer;
    Py_INCREF(name_key_of);
    self->name_key_of = name_key_of;
    Py_INCREF(mask_of);
    self->mask_of = mask_of;
    self->width = width;
    self->keeping = 1;
    return 0;
}

static int Columns_traverse(Columns *self, visitproc visit, void *arg) {
    Py_VISIT(self->courts);
    Py_VISIT(self->exemptions);
    Py_VISIT(self->keys);
    Py_VISIT(self->name_key_of);
    Py_VISIT(self->mask_of);
    return 0;
}

static int Columns_clear(Columns *self) {
    Py_CLEAR(self->courts);
    Py_CLEAR(self->exemptions);
    Py_CLEAR(self->keys);
    Py_CLEAR(self->name_key_of);
    Py_CLEAR(self->mask_of);
    return 0;
}

static void Columns_dealloc(Columns *self) {
    PyObject_GC_UnTrack(self);
    Columns_clear(self);
    for (int i = 0; i < N_COLUMNS; i++) PyMem_RawFree(self->col[i].data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Columns_get_keeping(Columns *self, void *unused) {
    return PyBool_FromLong(self->keeping);
}

static int Columns_set_keeping(Columns *self, PyObject *value, void *unused) {
    int truth = value == NULL ? -1 : PyObject_IsTrue(value);
    if (truth < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "keeping cannot be deleted");
        return -1;
    }
    self->keeping = truth;
    return 0;
}

static PyObject *Columns_get_count(Columns *self, void *which) {
    return PyLong_FromSsize_t(which ? self->taken : self->entries);
}

static PyGetSetDef Columns_getset[] = {
    {"keeping", (getter)Columns_get_keeping, (setter)Columns_set_keeping,
     "False after a bad row: take() still checks rows, stores none", NULL},
    {"entries", (getter)Columns_get_count, NULL, "rows stored", NULL},
    {"taken", (getter)Columns_get_count, NULL, "rows take() took", (void *)1},
    {NULL},
};

static PyMethodDef Columns_methods[] = {
    {"take", (PyCFunction)(void (*)(void))Columns_take, METH_FASTCALL,
     "take(row, line): True when plain() takes the row; then stored, while keeping."},
    {"feed", (PyCFunction)(void (*)(void))Columns_feed, METH_FASTCALL,
     "feed(lines, start, first_line): take lines[start:] while plain; where it stopped."},
    {"put", (PyCFunction)(void (*)(void))Columns_put, METH_FASTCALL,
     "put(entry, subjects, exemptions): store a row checked in Python."},
    {"columns", (PyCFunction)Columns_columns, METH_NOARGS,
     "columns(): ({name: bytes}, courts, exemptions); once."},
    {NULL, NULL, 0, NULL},
};

/* ---- Keyer: SubjectKeyer's keys made in C ------------------------------------------ */

static PyObject *digest_int(const uint8_t *digest, size_t n) { /* int.from_bytes(digest) */
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromUnsignedNativeBytes(digest, n, Py_ASNATIVEBYTES_BIG_ENDIAN);
#else
    return _PyLong_FromByteArray(digest, n, 0, 0);
#endif
}

static int keyer_ready(Keyer *self) {
    if (self->tags == NULL) PyErr_SetString(PyExc_RuntimeError, "Keyer not initialised");
    return self->tags != NULL;
}

/* subject_key(id_type, number): SubjectKeyer.subject_key, an int */
static PyObject *Keyer_subject_key(Keyer *self, PyObject *const *args, Py_ssize_t nargs) {
    uint8_t out[16];
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "subject_key(id_type, number)");
        return NULL;
    }
    if (!keyer_ready(self)) return NULL;
    if (subject_key(self, args[0], args[1], out) < 0) return NULL;
    return digest_int(out, 16);
}

/* 18 ASCII digits, or 17 and X, that make a well-formed USCC too (GB 32100): about one
 * resident ID in 31 (identity.resident_id_is_uscc) */
static int digits_are_uscc(const Py_UCS1 *c) {
    static const char alphabet[] = "0123456789ABCDEFGHJKLMNPQRTUWXY";
    static const int weights[17] = {1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28};
    int sum = 0;
    for (int i = 0; i < 17; i++) sum += (c[i] - '0') * weights[i];
    return c[17] == alphabet[(31 - sum % 31) % 31];
}

/* resident_key(number): subject_key(RESIDENT_ID, number) when number is a canonical
 * resident ID (what identity.normalize_resident_id returns unchanged), else None: the
 * caller normalises it and keys what that returns (server.convert.to_query). None too
 * for one that is a well-formed USCC as well: the caller looks it up as that
 * organisation also (an organisation's code sent as a resident ID). */
static PyObject *Keyer_resident_key(Keyer *self, PyObject *number) {
    uint8_t out[16];
    if (!keyer_ready(self)) return NULL;
    if (RESIDENT == NULL || BIRTH_DATES == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "resident_key: configure() the module first");
        return NULL;
    }
    if (!PyUnicode_Check(number)) {
        PyErr_SetString(PyExc_TypeError, "resident_key(number): a str");
        return NULL;
    }
    int canonical = canonical_resident_id(number);
    if (canonical == FAILED) return NULL;
    if (canonical != SURE || digits_are_uscc(PyUnicode_1BYTE_DATA(number))) Py_RETURN_NONE;
    if (subject_key(self, RESIDENT, number, out) < 0) return NULL;
    return digest_int(out, 16);
}

/* name_key(normalized_name): SubjectKeyer.name_key, an int; 0 for no name */
static PyObject *Keyer_name_key(Keyer *self, PyObject *name) {
    uint8_t out[8];
    Py_ssize_t n;
    if (!keyer_ready(self)) return NULL;
    const char *text = utf8(name, &n, "a name");
    if (text == NULL) return NULL;
    if (n == 0) return PyLong_FromLong(0);
    name_digest(self, text, n, out);
    return digest_int(out, 8);
}

static int Keyer_init(Keyer *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"secret", "tags", "subject_person", "name_person", NULL};
    Py_buffer secret, subject_person, name_person;
    PyObject *tags;
    if (self->tags != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Keyer cannot be initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*O!y*y*:Keyer", names, &secret,
                                     &PyDict_Type, &tags, &subject_person, &name_person))
        return -1;
    int ok = 0;
    tags = PyDict_Copy(tags); /* its own: the caller's dict may change later */
    if (tags == NULL) {
        ok = 0;
    } else if (PyDict_GET_SIZE(tags) > MAX_TAGS) {
        PyErr_SetString(PyExc_ValueError, "at most 16 tags");
    } else if (keyed_state(&self->name, &secret, &name_person, 8) == 0) {
        ok = 1;
        PyObject *kind, *tag;
        Py_ssize_t at = 0;
        while (ok && PyDict_Next(tags, &at, &kind, &tag)) {
            blake2b_state *S = &self->by_tag[self->n_tags];
            if (!PyBytes_Check(tag) || PyBytes_GET_SIZE(tag) == 0) {
                /* a tag, never empty: the key block is then never the last block */
                PyErr_SetString(PyExc_TypeError, "tags: id type -> bytes, not empty");
                ok = 0;
            } else if (keyed_state(S, &secret, &subject_person, 16)) {
                ok = 0;
            } else {
                blake2b_update(S, PyBytes_AS_STRING(tag), PyBytes_GET_SIZE(tag));
                self->tag_type[self->n_tags++] = kind; /* borrowed from our copy */
            }
        }
    }
    PyBuffer_Release(&secret);
    PyBuffer_Release(&subject_person);
    PyBuffer_Release(&name_person);
    if (!ok) {
        self->n_tags = 0;
        Py_XDECREF(tags);
        return -1;
    }
    self->tags = tags;
    return 0;
}

static int Keyer_traverse(Keyer *self, visitproc visit, void *arg) {
    Py_VISIT(self->tags);
    return 0;
}

static int Keyer_clear(Keyer *self) {
    self->n_tags = 0;
    Py_CLEAR(self->tags);
    return 0;
}

static void Keyer_dealloc(Keyer *self) {
    PyObject_GC_UnTrack(self);
    Keyer_clear(self);
    secure_zero_memory(self->by_tag, sizeof self->by_tag); /* keyed states: burn them */
    secure_zero_memory(&self->name, sizeof self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Keyer_methods[] = {
    {"subject_key", (PyCFunction)(void (*)(void))Keyer_subject_key, METH_FASTCALL,
     "subject_key(id_type, number): SubjectKeyer.subject_key."},
    {"resident_key", (PyCFunction)Keyer_resident_key, METH_O,
     "resident_key(number): subject_key(RESIDENT_ID, number) for a canonical resident ID, "
     "else None (normalise it first)"},
    {"name_key", (PyCFunction)Keyer_name_key, METH_O,
     "name_key(normalized_name): SubjectKeyer.name_key."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KeyerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shixin_check.loader._rowcheck.Keyer",
    .tp_doc = "SubjectKeyer's subject and name keys, made in C (loader/columns.py).",
    .tp_basicsize = sizeof(Keyer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Keyer_init,
    .tp_dealloc = (destructor)Keyer_dealloc,
    .tp_traverse = (traverseproc)Keyer_traverse,
    .tp_clear = (inquiry)Keyer_clear,
    .tp_methods = Keyer_methods,
};

static PyTypeObject ColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shixin_check.loader._rowcheck.Columns",
    .tp_doc = "A load chunk's columns, built in C (loader/columns.py's ColumnBuilder).",
    .tp_basicsize = sizeof(Columns),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Columns_init,
    .tp_dealloc = (destructor)Columns_dealloc,
    .tp_traverse = (traverseproc)Columns_traverse,
    .tp_clear = (inquiry)Columns_clear,
    .tp_methods = Columns_methods,
    .tp_getset = Columns_getset,
};

/* ---- subject_fields: a snapshot's subject hashes, as load --redis writes them ---------- */

static const char HEX_DIGITS[] = "0123456789abcdef";

/* UTF-8 text as a JSON string, escaped as orjson escapes it: \" \\ \b \t \n \f \r, the
 * other control characters as \u00xx, everything else as it is */
static int put_json_text(Buf *b, const unsigned char *s, size_t n) {
    if (grow(b, 6 * n + 2) < 0) return -1;
    char *p = b->data + b->len;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *p++ = (char)c;
            continue;
        }
        *p++ = '\\';
        switch (c) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\b': *p++ = 'b'; break;
        case '\t': *p++ = 't'; break;
        case '\n': *p++ = 'n'; break;
        case '\f': *p++ = 'f'; break;
        case '\r': *p++ = 'r'; break;
        default:
            *p++ = 'u', *p++ = '0', *p++ = '0';
            *p++ = HEX_DIGITS[c >> 4], *p++ = HEX_DIGITS[c & 15];
        }
    }
    *p++ = '"';
    b->len = (size_t)(p - b->data);
    return 0;
}

static int put_unsigned(Buf *b, unsigned long long v) { /* what %llu writes, without printf */
    char digits[20];
    int n = 0;
    do digits[19 - n++] = (char)('0' + v % 10);
    while (v /= 10);
    return put_bytes(b, digits + 20 - n, (size_t)n);
}

static int put_signed(Buf *b, int32_t v) {
    if (v < 0 && put_bytes(b, "-", 1) < 0) return -1;
    return put_unsigned(b, v < 0 ? (unsigned long long)(-(long long)v) : (unsigned long long)v);
}

/* a key's matches, "[m,...]", into fields[key]; after those stored already if there are */
static int put_field(PyObject *fields, const char *key, Buf *matches) {
    PyObject *name = PyBytes_FromStringAndSize(key, 16);
    if (name == NULL) return -1;
    PyObject *value, *had = PyDict_GetItemWithError(fields, name);
    if (had == NULL && PyErr_Occurred()) goto fail;
    if (had == NULL) {
        value = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)matches->len + 2);
        if (value == NULL) goto fail;
        char *v = PyBytes_AS_STRING(value);
        v[0] = '[';
        memcpy(v + 1, matches->data, matches->len);
        v[matches->len + 1] = ']';
    } else { /* the key seen before in this bucket, not just before: its list goes on */
        Py_ssize_t n = PyBytes_GET_SIZE(had);
        value = PyBytes_FromStringAndSize(NULL, n + 1 + (Py_ssize_t)matches->len);
        if (value == NULL) goto fail;
        char *v = PyBytes_AS_STRING(value);
        memcpy(v, PyBytes_AS_STRING(had), (size_t)n - 1);
        v[n - 1] = ',';
        memcpy(v + n, matches->data, matches->len);
        v[n + (Py_ssize_t)matches->len] = ']';
    }
    int failed = PyDict_SetItem(fields, name, value);
    Py_DECREF(value);
    Py_DECREF(name);
    matches->len = 0;
    return failed;
fail:
    Py_DECREF(name);
    return -1;
}

/* one match as loader/index_redis.encode_match lists it, from the base's columns */
typedef struct {
    Py_buffer raw_keys, m_entry, m_role, m_name, m_mask, text, text_at, e_type, e_status,
        e_listed, e_valid, e_court, k_hi;
    Py_ssize_t width, rows, courts_n;
    PyObject **courts, *exemptions;
    int debtor;
} Base;

#define AT(buffer, type, i) (((const type *)(buffer).buf)[i])

static int put_match(Buf *b, const Base *base, Py_ssize_t i) {
    uint32_t row = AT(base->m_entry, uint32_t, i);
    if ((Py_ssize_t)row >= base->rows) {
        PyErr_Format(PyExc_ValueError, "key %zd: entry row %u beyond the columns", i, row);
        return -1;
    }
    uint64_t from = AT(base->text_at, uint64_t, row), to = AT(base->text_at, uint64_t, row + 1);
    if (from > to || to > (uint64_t)base->text.len) {
        PyErr_Format(PyExc_ValueError, "entry row %u: its text is beyond the text column", row);
        return -1;
    }
    const unsigned char *text = (const unsigned char *)base->text.buf + from;
    size_t n = (size_t)(to - from), parts[4] = {0}, found = 1; /* parts: where each starts */
    for (size_t k = 0; k < n && found < 4; k++)
        if (text[k] == 0x1f) parts[found++] = k + 1;
    if (found < 3) {
        PyErr_Format(PyExc_ValueError, "entry row %u: its text has no case number or name", row);
        return -1;
    }
    size_t end2 = found == 4 ? parts[3] - 1 : n;
    uint32_t court = AT(base->e_court, uint32_t, row);
    if ((Py_ssize_t)court >= base->courts_n || !PyBytes_Check(base->courts[court])) {
        PyErr_Format(PyExc_ValueError, "entry row %u: court %u is not one of the courts", row, court);
        return -1;
    }
    uint8_t role = AT(base->m_role, uint8_t, i);
    const unsigned char *mask = (const unsigned char *)base->m_mask.buf + i * base->width;
    size_t mask_n = (size_t)base->width;
    while (mask_n > 0 && (mask[mask_n - 1] == ' ' || (mask[mask_n - 1] >= '\t' && mask[mask_n - 1] <= '\r')))
        mask_n--; /* bytes.rstrip() */
    PyObject *exempt = NULL;
    if (PyDict_GET_SIZE(base->exemptions)) { /* by key row: a person's own exemptions */
        PyObject *key = PyLong_FromSsize_t(i);
        if (key == NULL) return -1;
        exempt = PyDict_GetItemWithError(base->exemptions, key);
        Py_DECREF(key);
        if (exempt == NULL && PyErr_Occurred()) return -1;
        if (exempt != NULL && !PyBytes_Check(exempt)) {
            PyErr_SetString(PyExc_TypeError, "exemptions: JSON bytes by key row");
            return -1;
        }
    }
    PyObject *court_json = base->courts[court];
    if (put_bytes(b, b->len ? ",[" : "[", b->len ? 2 : 1) < 0 ||
        put_json_text(b, text, parts[1] - 1) < 0 || put_bytes(b, ",", 1) < 0 ||
        put_unsigned(b, AT(base->e_type, uint8_t, row)) < 0 || put_bytes(b, ",", 1) < 0 ||
        put_unsigned(b, AT(base->e_status, uint8_t, row)) < 0 || put_bytes(b, ",", 1) < 0 ||
        put_unsigned(b, role) < 0 || put_bytes(b, ",", 1) < 0 ||
        put_unsigned(b, AT(base->m_name, uint64_t, i)) < 0 || put_bytes(b, ",", 1) < 0 ||
        put_json_text(b, text + parts[1], parts[2] - 1 - parts[1]) < 0 ||
        put_bytes(b, ",", 1) < 0 ||
        put_bytes(b, PyBytes_AS_STRING(court_json), (size_t)PyBytes_GET_SIZE(court_json)) < 0 ||
        put_bytes(b, ",", 1) < 0 ||
        put_json_text(b, text + parts[2], end2 - parts[2]) < 0 ||
        put_bytes(b, ",", 1) < 0 || put_json_text(b, mask, mask_n) < 0 ||
        put_bytes(b, ",", 1) < 0 || put_signed(b, AT(base->e_listed, int32_t, row)) < 0 ||
        put_bytes(b, ",", 1) < 0 || put_signed(b, AT(base->e_valid, int32_t, row)) < 0 ||
        put_bytes(b, ",", 1) < 0 ||
        (exempt ? put_bytes(b, PyBytes_AS_STRING(exempt), (size_t)PyBytes_GET_SIZE(exempt))
                : put_bytes(b, "[]", 2)) < 0 ||
        put_bytes(b, "]", 1) < 0)
        return -1;
    return 0;
}

static int long_enough(Py_buffer *buffer, Py_ssize_t items, Py_ssize_t size, const char *name) {
    if (buffer->len / size < items) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, too few for %zd items", name, buffer->len,
                     items);
        return 0;
    }
    return 1;
}

static PyObject *subject_fields(PyObject *module, PyObject *args) {
    Py_ssize_t lo, hi;
    int bits;
    PyObject *courts, *result = NULL, *fields = NULL, *owned = NULL;
    Base base = {0};
    Buf matches = {0};
    if (!PyArg_ParseTuple(args, "nniy*y*y*y*y*y*ny*y*y*y*y*y*y*O!O!i:subject_fields", &lo, &hi,
                          &bits, &base.k_hi, &base.raw_keys, &base.m_entry, &base.m_role,
                          &base.m_name, &base.m_mask, &base.width, &base.text, &base.text_at,
                          &base.e_type, &base.e_status, &base.e_listed, &base.e_valid,
                          &base.e_court, &PyList_Type, &courts, &PyDict_Type, &base.exemptions,
                          &base.debtor))
        return NULL;
    base.rows = base.e_type.len;
    /* a tuple of its own: a list's item array could be resized under us by Python code
     * that runs during the call (an exemption key's __eq__, a collection's __del__) */
    owned = PySequence_Tuple(courts);
    if (owned == NULL) goto done;
    base.courts = PySequence_Fast_ITEMS(owned);
    base.courts_n = PyTuple_GET_SIZE(owned);
    if (lo < 0 || hi < lo || bits < 0 || bits > 63 || base.width < 0) {
        PyErr_SetString(PyExc_ValueError, "subject_fields: bad range, bits or width");
        goto done;
    }
    if (!(long_enough(&base.k_hi, hi, 8, "k_hi") && long_enough(&base.raw_keys, hi, 16, "raw_keys") &&
          long_enough(&base.m_entry, hi, 4, "m_entry") && long_enough(&base.m_role, hi, 1, "m_role") &&
          long_enough(&base.m_name, hi, 8, "m_name") &&
          (base.width == 0 || long_enough(&base.m_mask, hi, base.width, "m_mask")) &&
          long_enough(&base.text_at, base.rows + 1, 8, "e_text_at") &&
          long_enough(&base.e_status, base.rows, 1, "e_status") &&
          long_enough(&base.e_listed, base.rows, 4, "e_listed") &&
          long_enough(&base.e_valid, base.rows, 4, "e_valid") &&
          long_enough(&base.e_court, base.rows, 4, "e_court")))
        goto done;
    result = PyList_New(0);
    if (result == NULL) goto done;
    const char *keys = base.raw_keys.buf;
    long long bucket = -1;
    for (Py_ssize_t i = lo; i < hi; i++) {
        long long b = bits ? (long long)(AT(base.k_hi, uint64_t, i) >> (64 - bits)) : 0;
        int same_key = i > lo && memcmp(keys + 16 * i, keys + 16 * (i - 1), 16) == 0;
        if ((!same_key || b != bucket) && matches.len &&
            put_field(fields, keys + 16 * (i - 1), &matches) < 0)
            goto fail;
        if (b != bucket) { /* a new bucket: its own fields */
            Py_XDECREF(fields);
            fields = PyDict_New();
            if (fields == NULL) goto fail;
            PyObject *pair = Py_BuildValue("(LO)", b, fields);
            if (pair == NULL || PyList_Append(result, pair) < 0) {
                Py_XDECREF(pair);
                goto fail;
            }
            Py_DECREF(pair);
            bucket = b;
        }
        if (put_match(&matches, &base, i) < 0) goto fail;
    }
    if (matches.len && put_field(fields, keys + 16 * (hi - 1), &matches) < 0) goto fail;
    goto done;
fail:
    Py_CLEAR(result);
done:
    Py_XDECREF(fields);
    Py_XDECREF(owned);
    PyMem_RawFree(matches.data);
    Py_buffer *buffers[] = {&base.k_hi, &base.raw_keys, &base.m_entry, &base.m_role, &base.m_name,
                            &base.m_mask, &base.text, &base.text_at, &base.e_type, &base.e_status,
                            &base.e_listed, &base.e_valid, &base.e_court};
    for (size_t k = 0; k < sizeof buffers / sizeof *buffers; k++) PyBuffer_Release(buffers[k]);
    return result;
}

static int among(PyObject *key, PyObject *const *keys, int n) {
    for (int i = 0; i < n; i++)
        if (PyUnicode_Compare(key, keys[i]) == 0) return 1;
    return 0;
}

/* The fields of `fields` (a frozenset of str) that none of `read` is, sorted, as a list,
 * but those of `later` last (a subject's fields nothing reads come before the other
 * kind's identity). A read key that is not a field is an error: the C checker would
 * take a row that parse_entry refuses. */
static PyObject *others(PyObject *fields, PyObject *const *read, int n, PyObject *const *later,
                        int m, const char *what) {
    PyObject *sorted = PySequence_List(fields), *out = NULL;
    if (sorted == NULL || PyList_Sort(sorted) < 0) goto done;
    for (int i = 0; i < n; i++) {
        int found = PySet_Contains(fields, read[i]);
        if (found <= 0) {
            if (found == 0)
                PyErr_Format(PyExc_ValueError, "%s: %R is read but is none of them", what, read[i]);
            goto done;
        }
    }
    out = PyList_New(0);
    if (out == NULL) goto done;
    for (int pass = 0; pass < 2; pass++) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(sorted); i++) {
            PyObject *key = PyList_GET_ITEM(sorted, i);
            if (!PyUnicode_CheckExact(key)) {
                PyErr_Format(PyExc_TypeError, "%s: the fields must be str", what);
                Py_CLEAR(out);
                goto done;
            }
            if (among(key, read, n) || among(key, later, m) != pass) continue;
            if (PyList_Append(out, key) < 0) {
                Py_CLEAR(out);
                goto done;
            }
        }
    }
done:
    Py_XDECREF(sorted);
    return out;
}

static int keep(PyObject **slot, PyObject *value) {
    Py_XINCREF(value);
    Py_XSETREF(*slot, value);
    return value != NULL;
}

static PyObject *configure(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"list_types", "statuses", "active", "roles", "id_types",
                            "resident", "days", "debtor", "no_end", "provinces",
                            "birth_dates", "loads", "decode_error", "entry_fields",
                            "subject_fields", "related_fields", NULL};
    PyObject *list_types, *statuses, *active, *roles, *id_types, *resident, *days, *debtor,
        *no_end, *provinces, *birth_dates, *loads, *decode_error, *entry_fields,
        *subject_fields, *related_fields;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!OO!O!OO!OO!OO!OOO!O!O!:configure", names,
                                     &PyDict_Type, &list_types, &PyDict_Type, &statuses, &active,
                                     &PyDict_Type, &roles, &PyDict_Type, &id_types, &resident,
                                     &PyDict_Type, &days, &debtor, &PyLong_Type, &no_end,
                                     &provinces, &PyFrozenSet_Type, &birth_dates, &loads,
                                     &decode_error, &PyFrozenSet_Type, &entry_fields,
                                     &PyFrozenSet_Type, &subject_fields, &PyFrozenSet_Type,
                                     &related_fields))
        return NULL;
    if (!PyCallable_Check(loads) || !PyExceptionClass_Check(decode_error)) {
        PyErr_SetString(PyExc_TypeError, "loads: a function, decode_error: its exception");
        return NULL;
    }
    memset(PROVINCE, 0, sizeof PROVINCE);
    PyObject *iterator = PyObject_GetIter(provinces);
    if (iterator == NULL) return NULL;
    PyObject *code;
    while ((code = PyIter_Next(iterator)) != NULL) {
        const char *c = PyUnicode_Check(code) ? PyUnicode_AsUTF8(code) : NULL;
        if (c != NULL && c[0] >= '0' && c[0] <= '9' && c[1] >= '0' && c[1] <= '9' && !c[2])
            PROVINCE[(c[0] - '0') * 10 + (c[1] - '0')] = 1;
        Py_DECREF(code);
        if (c == NULL) {
            Py_DECREF(iterator);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "provinces: two digits each");
            return NULL;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) return NULL;
    /* the fields check() does not read, which a row's keys are counted against */
    PyObject *entry_read[] = {K_ENTRY_ID, K_LIST_TYPE, K_STATUS, K_SUBJECT, K_RELATED,
                              K_EXEMPTIONS, K_PUBLISHED_ON, K_VALID_UNTIL, K_FILED_ON,
                              K_CASE_NUMBER, K_COURT};
    PyObject *person_read[] = {K_TYPE, K_NAME, K_ID_TYPE, K_ID_NUMBER};
    PyObject *organization_read[] = {K_TYPE, K_NAME, K_USCC};
    PyObject *related_read[] = {K_ROLE, K_NAME, K_ID_TYPE, K_ID_NUMBER};
    PyObject *entry_others = others(entry_fields, entry_read, 11, NULL, 0, "entry_fields");
    PyObject *person_others = entry_others == NULL ? NULL :
        others(subject_fields, person_read, 4, organization_read, 3, "subject_fields");
    PyObject *organization_others = person_others == NULL ? NULL :
        others(subject_fields, organization_read, 3, person_read, 4, "subject_fields");
    PyObject *related_others = organization_others == NULL ? NULL :
        others(related_fields, related_read, 4, NULL, 0, "related_fields");
    int ready = related_others != NULL;
    if (ready) {
        keep(&ENTRY_OTHERS, entry_others);
        keep(&PERSON_OTHERS, person_others);
        keep(&ORGANIZATION_OTHERS, organization_others);
        keep(&RELATED_OTHERS, related_others);
    }
    Py_XDECREF(entry_others);
    Py_XDECREF(person_others);
    Py_XDECREF(organization_others);
    Py_XDECREF(related_others);
    if (!ready) return NULL;
    keep(&LIST_TYPES, list_types);
    keep(&STATUSES, statuses);
    keep(&ACTIVE, active);
    keep(&ROLES, roles);
    keep(&ID_TYPES, id_types);
    keep(&RESIDENT, resident);
    keep(&DEBTOR, debtor);
    keep(&NO_END, no_end);
    keep(&BIRTH_DATES, birth_dates);
    keep(&LOADS, loads);
    keep(&DECODE_ERROR, decode_error);
    keep(&DAYS, days); /* last: plain() refuses to run until it is set */
    Py_RETURN_NONE;
}

/* identity.mask_id of each number, as the JSON array orjson writes of those masks:
 * ["110105********0013",...] (a batch's audit record). None when a number is not
 * ASCII letters and digits: Python masks and encodes those. */
static PyObject *masked_json(PyObject *module, PyObject *numbers) {
    (void)module;
    if (!PyList_CheckExact(numbers)) {
        PyErr_SetString(PyExc_TypeError, "masked_json takes a list of str");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(numbers), size = 2;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *number = PyList_GET_ITEM(numbers, i);
        if (!PyUnicode_CheckExact(number) || !PyUnicode_IS_ASCII(number)) Py_RETURN_NONE;
        size += PyUnicode_GET_LENGTH(number) + 3; /* its quotes and a comma */
    }
    if (count > 0) size -= 1; /* no comma after the last */
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    char *at = PyBytes_AS_STRING(out);
    *at++ = '[';
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *number = PyList_GET_ITEM(numbers, i);
        const char *c = (const char *)PyUnicode_1BYTE_DATA(number);
        Py_ssize_t n = PyUnicode_GET_LENGTH(number);
        for (Py_ssize_t j = 0; j < n; j++) {
            char x = c[j];
            if (!((x >= '0' && x <= '9') || (x >= 'A' && x <= 'Z') || (x >= 'a' && x <= 'z'))) {
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
        }
        /* no birth date shown: a first-generation card's 6 digits, 16 or 17 characters'
         * every place an 18-digit number's 8 could be (identity.mask_id) */
        Py_ssize_t head = n >= 15 ? 6 : n > 4 ? 2 : 0;
        Py_ssize_t tail = n >= 18 ? 4 : n == 15 ? 3 : n > 15 ? n - 14 : n > 4 ? 2 : 0;
        if (i > 0) *at++ = ',';
        *at++ = '"';
        memcpy(at, c, head);
        memset(at + head, '*', n - head - tail);
        memcpy(at + n - tail, c + n - tail, tail);
        at += n;
        *at++ = '"';
    }
    *at = ']';
    return out;
}

static PyMethodDef methods[] = {
    {"masked_json", (PyCFunction)masked_json, METH_O,
     "masked_json(numbers): the JSON array of identity.mask_id of each, as orjson "
     "writes it, or None when a number is not ASCII letters and digits."},
    {"plain", (PyCFunction)(void (*)(void))plain, METH_FASTCALL,
     "plain(row, line): (entry, subjects, exemptions) as ColumnBuilder._plain makes "
     "them, or None when the row is not in the plain form."},
    {"subject_fields", (PyCFunction)subject_fields, METH_VARARGS,
     "subject_fields(lo, hi, bits, k_hi, raw_keys, m_entry, m_role, m_name, m_mask, width, "
     "text, e_text_at, e_type, e_status, e_listed, e_valid, e_court, courts, exemptions, "
     "debtor): [(bucket, {key: JSON of its matches})] of subject keys [lo, hi), as "
     "publish_redis writes them."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "configure(**tables): the look-up tables plain() shares with loader.listfile."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_rowcheck", "The load's row checker and column builder in C (loader/columns.py).", -1,
    methods,
};

static int intern(PyObject **slot, const char *text) {
    *slot = PyUnicode_InternFromString(text);
    return *slot != NULL;
}

PyMODINIT_FUNC PyInit__rowcheck(void) {
    if (!(intern(&K_ENTRY_ID, "entry_id") && intern(&K_LIST_TYPE, "list_type") &&
          intern(&K_STATUS, "status") && intern(&K_SUBJECT, "subject") &&
          intern(&K_TYPE, "type") && intern(&K_NAME, "name") && intern(&K_USCC, "uscc") &&
          intern(&K_ID_TYPE, "id_type") && intern(&K_ID_NUMBER, "id_number") &&
          intern(&K_RELATED, "related_persons") && intern(&K_ROLE, "role") &&
          intern(&K_EXEMPTIONS, "exemptions") &&
          intern(&K_PUBLISHED_ON, "published_on") && intern(&K_VALID_UNTIL, "valid_until") &&
          intern(&K_FILED_ON, "filed_on") && intern(&K_CASE_NUMBER, "case_number") &&
          intern(&K_COURT, "court") && intern(&S_PERSON, "PERSON") &&
          intern(&S_ORGANIZATION, "ORGANIZATION") && intern(&SEP, "\x1f") && intern(&EMPTY, "")))
        return NULL;
    ZERO = PyLong_FromLong(0);
    if (ZERO == NULL) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    if (PyType_Ready(&KeyerType) < 0 || PyType_Ready(&ColumnsType) < 0 ||
        PyModule_AddObjectRef(module, "Keyer", (PyObject *)&KeyerType) < 0 ||
        PyModule_AddObjectRef(module, "Columns", (PyObject *)&ColumnsType) < 0 ||
        PyModule_AddStringConstant(module, "SOURCE_DIGEST", SOURCE_DIGEST) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
