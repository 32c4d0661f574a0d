/* The load's row checker in C: what loader/columns.py's ColumnBuilder._plain
 * makes of a snapshot row in the plain form, without a Python frame.
 *
 * plain(row, line) takes one parsed row (the dict orjson made) and returns
 * (entry, subjects, exemptions), exactly the values _plain returns, or None
 * whenever it is not sure: a value with white space at either end, an ID
 * that is not already canonical, a date not yet in listfile._DAYS, any
 * unexpected type. None sends the row on to _plain itself, and from there to
 * parse_entry, so this file never decides that a row is bad and never words
 * an error: it only takes the rows it can take whole. tests/test_loader.py
 * holds it to _plain on every field of a row made odd in many ways.
 *
 * configure(...) hands it the tables it shares with the Python code (the
 * enums' look-ups, the dates seen, the province codes, the birth dates), so
 * the two can never disagree about them. SOURCE_DIGEST is the digest of this
 * file as setup.py compiled it: loader/columns.py does not use a build older
 * than the source beside it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef SOURCE_DIGEST
#define SOURCE_DIGEST ""
#endif

/* tables from configure(): owned references, NULL until then */
static PyObject *LIST_TYPES, *STATUSES, *ACTIVE, *ROLES, *ID_TYPES, *RESIDENT, *CHANNELS;
static PyObject *DAYS, *DEBTOR, *EXEMPTION, *NO_END, *BIRTH_DATES, *ZERO, *SEP, *EMPTY;
static char PROVINCE[100];

/* the rows' field names, interned once */
static PyObject *K_ENTRY_ID, *K_LIST_TYPE, *K_STATUS, *K_SUBJECT, *K_TYPE, *K_NAME, *K_USCC,
    *K_ID_TYPE, *K_ID_NUMBER, *K_RELATED, *K_ROLE, *K_EXEMPTIONS, *K_CHANNEL, *K_FROM,
    *K_UNTIL, *K_PUBLISHED_ON, *K_VALID_UNTIL, *K_FILED_ON, *K_CASE_NUMBER, *K_COURT,
    *S_PERSON, *S_ORGANIZATION;

/* Set when a row is not plain: the caller returns None. */
#define NOT_SURE 0
#define SURE 1
#define FAILED -1 /* a Python error is set (memory): the caller returns NULL */

static PyObject *get(PyObject *dict, PyObject *key) {
    /* borrowed, NULL when absent. The rows come from orjson or the CSV reader: exact
     * dicts with exact str keys, so a look-up cannot fail or run Python code. */
    return PyDict_GetItemWithError(dict, key);
}

/* A str that str.strip() leaves alone and that is not empty: the value itself. */
static int plain_text(PyObject *v) {
    if (v == NULL || !PyUnicode_CheckExact(v)) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    if (n == 0) return 0;
    int kind = PyUnicode_KIND(v);
    const void *data = PyUnicode_DATA(v);
    return !Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, 0)) &&
           !Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, n - 1));
}

/* A value that Python's `value or default` would replace: absent, None, "", [], {}, 0... */
static int falsy(PyObject *v, int *out) {
    if (v == NULL || v == Py_None) {
        *out = 1;
        return SURE;
    }
    int truth = PyObject_IsTrue(v);
    if (truth < 0) return FAILED;
    *out = !truth;
    return SURE;
}

/* table[v] for an exact str v, borrowed; NULL when v is not a str or not a key */
static PyObject *choice(PyObject *table, PyObject *v) {
    if (v == NULL || !PyUnicode_CheckExact(v)) return NULL;
    return PyDict_GetItemWithError(table, v);
}

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
 * set when not sure. */
static PyObject *person(PyObject *obj, PyObject *role) {
    if (!PyDict_CheckExact(obj)) return NULL;
    PyObject *kind = get(obj, K_ID_TYPE);
    int absent;
    if (falsy(kind, &absent) == FAILED) return NULL;
    PyObject *id_type = absent ? RESIDENT : choice(ID_TYPES, kind);
    PyObject *number = get(obj, K_ID_NUMBER);
    PyObject *name = get(obj, K_NAME);
    if (id_type == NULL || !plain_text(number) || !plain_text(name)) return NULL;
    int ok = id_type == RESIDENT ? canonical_resident_id(number) : canonical_document(number);
    if (ok != SURE) return NULL;
    return PyTuple_Pack(4, role, name, id_type, number);
}

/* columns._exemption: an Exemption, new reference; NULL and no error set when not sure. */
static PyObject *exemption(PyObject *obj) {
    if (!PyDict_CheckExact(obj)) return NULL;
    PyObject *channel = choice(CHANNELS, get(obj, K_CHANNEL));
    if (channel == NULL) return NULL;
    PyObject *first = day(get(obj, K_FROM), NULL);
    PyObject *last = day(get(obj, K_UNTIL), NULL);
    if (first == NULL || last == NULL) return NULL;
    long from = PyLong_AsLong(first), until = PyLong_AsLong(last);
    if (PyErr_Occurred() || until < from) return NULL; /* _DAYS holds small ints: never set */
    return PyObject_CallFunctionObjArgs(EXEMPTION, channel, first, last, NULL);
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

static PyObject *plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "plain(row, line)");
        return NULL;
    }
    if (DAYS == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    PyObject *obj = args[0], *line = args[1];
    if (!PyDict_CheckExact(obj)) Py_RETURN_NONE;
    PyObject *subjects = NULL, *exemptions = NULL, *text = NULL, *entry = NULL, *out = NULL;
    int result = SURE, empty;

    PyObject *entry_id = get(obj, K_ENTRY_ID);
    PyObject *list_type = choice(LIST_TYPES, get(obj, K_LIST_TYPE));
    PyObject *status_value = get(obj, K_STATUS);
    if (falsy(status_value, &empty) == FAILED) BAIL(FAILED);
    PyObject *status = empty ? ACTIVE : choice(STATUSES, status_value);
    PyObject *subject = get(obj, K_SUBJECT);
    if (!plain_text(entry_id) || list_type == NULL || status == NULL || subject == NULL ||
        !PyDict_CheckExact(subject))
        BAIL(NOT_SURE);
    PyObject *people = get(obj, K_RELATED);
    int no_people;
    if (falsy(people, &no_people) == FAILED) BAIL(FAILED);
    PyObject *kind = get(subject, K_TYPE);
    PyObject *organization = EMPTY; /* a person's entry has no organisation name */
    subjects = PyList_New(0);
    if (subjects == NULL) BAIL(FAILED);
    if (kind != NULL && PyUnicode_CheckExact(kind) &&
        PyUnicode_Compare(kind, S_PERSON) == 0) {
        if (!no_people) BAIL(NOT_SURE);
        int added = add_subject(subjects, person(subject, DEBTOR));
        if (added != SURE) BAIL(added);
    } else if (kind != NULL && PyUnicode_CheckExact(kind) &&
               PyUnicode_Compare(kind, S_ORGANIZATION) == 0) {
        organization = get(subject, K_NAME);
        PyObject *uscc = get(subject, K_USCC);
        if (!plain_text(organization) || !plain_text(uscc)) BAIL(NOT_SURE);
        int ok = canonical_uscc(uscc);
        if (ok != SURE) BAIL(ok);
        int added = add_subject(subjects, PyTuple_Pack(4, DEBTOR, organization, Py_None, uscc));
        if (added != SURE) BAIL(added);
        if (!no_people) {
            if (!PyList_CheckExact(people)) BAIL(NOT_SURE);
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(people); i++) {
                PyObject *p = PyList_GET_ITEM(people, i);
                if (!PyDict_CheckExact(p)) BAIL(NOT_SURE);
                PyObject *role = choice(ROLES, get(p, K_ROLE));
                if (role == NULL) BAIL(PyErr_Occurred() ? FAILED : NOT_SURE);
                added = add_subject(subjects, person(p, role));
                if (added != SURE) BAIL(added);
            }
        }
    } else {
        BAIL(NOT_SURE);
    }

    PyObject *given = get(obj, K_EXEMPTIONS);
    int no_exemptions;
    if (falsy(given, &no_exemptions) == FAILED) BAIL(FAILED);
    if (no_exemptions) {
        exemptions = PyTuple_New(0);
    } else {
        if (!PyList_CheckExact(given)) BAIL(NOT_SURE);
        Py_ssize_t n = PyList_GET_SIZE(given);
        exemptions = PyTuple_New(n);
        for (Py_ssize_t i = 0; exemptions != NULL && i < n; i++) {
            PyObject *e = exemption(PyList_GET_ITEM(given, i));
            if (e == NULL) BAIL(PyErr_Occurred() ? FAILED : NOT_SURE);
            PyTuple_SET_ITEM(exemptions, i, e);
        }
    }
    if (exemptions == NULL) BAIL(FAILED);

    PyObject *published = day(get(obj, K_PUBLISHED_ON), ZERO);
    PyObject *valid_until = day(get(obj, K_VALID_UNTIL), NO_END);
    PyObject *filed = day(get(obj, K_FILED_ON), ZERO);
    PyObject *case_number = get(obj, K_CASE_NUMBER);
    PyObject *court = get(obj, K_COURT);
    if (published == NULL || valid_until == NULL || filed == NULL || !plain_text(case_number) ||
        !plain_text(court))
        BAIL(PyErr_Occurred() ? FAILED : NOT_SURE);
    long first = PyLong_AsLong(published);
    long last = PyLong_AsLong(valid_until);
    if (last == 0) { /* 1970-01-01, like no date, is no end (parse_entry) */
        valid_until = NO_END;
        last = PyLong_AsLong(NO_END);
    }
    if (PyErr_Occurred()) BAIL(FAILED); /* _DAYS holds small ints: never */
    if (first && last < first) BAIL(NOT_SURE);

    PyObject *parts[3] = {entry_id, case_number, organization};
    PyObject *joined = PyTuple_New(3);
    if (joined == NULL) BAIL(FAILED);
    for (int i = 0; i < 3; i++) {
        Py_INCREF(parts[i]);
        PyTuple_SET_ITEM(joined, i, parts[i]);
    }
    text = PyUnicode_Join(SEP, joined);
    Py_DECREF(joined);
    if (text == NULL) BAIL(FAILED);
    entry = PyTuple_Pack(8, entry_id, line, list_type, status, published, valid_until, court, text);
    if (entry == NULL) BAIL(FAILED);
    out = PyTuple_Pack(3, entry, subjects, exemptions);
    if (out == NULL) BAIL(FAILED);

done:
    Py_XDECREF(subjects);
    Py_XDECREF(exemptions);
    Py_XDECREF(text);
    Py_XDECREF(entry);
    if (result == FAILED || (result != SURE && PyErr_Occurred())) {
        Py_XDECREF(out);
        return NULL;
    }
    if (result != SURE) Py_RETURN_NONE;
    return out;
}

/* identity.mask_id of each number, each padded with spaces to `width` bytes, in one
 * bytes object: what ColumnBuilder._flush packs into m_mask. None when a number is
 * not ASCII or its mask is wider than `width`: the Python code decides then. */
static PyObject *masks(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[0]) || !PyLong_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "masks(numbers: list[str], width: int)");
        return NULL;
    }
    PyObject *numbers = args[0];
    Py_ssize_t width = PyLong_AsSsize_t(args[1]), count = PyList_GET_SIZE(numbers);
    if (width < 0 || (width > 0 && count > PY_SSIZE_T_MAX / width)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "width out of range");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, count * width);
    if (out == NULL) return NULL;
    char *at = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < count; i++, at += width) {
        PyObject *number = PyList_GET_ITEM(numbers, i);
        if (!PyUnicode_CheckExact(number) || !PyUnicode_IS_ASCII(number) ||
            PyUnicode_GET_LENGTH(number) > width) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        const char *c = (const char *)PyUnicode_1BYTE_DATA(number);
        Py_ssize_t n = PyUnicode_GET_LENGTH(number);
        Py_ssize_t head = n >= 15 ? 6 : n > 4 ? 2 : 0, tail = n >= 15 ? 4 : n > 4 ? 2 : 0;
        memcpy(at, c, head);
        memset(at + head, '*', n - head - tail);
        memcpy(at + n - tail, c + n - tail, tail);
        memset(at + n, ' ', width - n);
    }
    return out;
}

static int keep(PyObject **slot, PyObject *value) {
    Py_XINCREF(value);
    Py_XSETREF(*slot, value);
    return value != NULL;
}

static PyObject *configure(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"list_types", "statuses", "active", "roles", "id_types",
                            "resident", "channels", "days", "debtor", "exemption",
                            "no_end", "provinces", "birth_dates", NULL};
    PyObject *list_types, *statuses, *active, *roles, *id_types, *resident, *channels, *days,
        *debtor, *exemption_type, *no_end, *provinces, *birth_dates;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!OO!O!OO!O!OOO!OO!:configure", names,
                                     &PyDict_Type, &list_types, &PyDict_Type, &statuses, &active,
                                     &PyDict_Type, &roles, &PyDict_Type, &id_types, &resident,
                                     &PyDict_Type, &channels, &PyDict_Type, &days, &debtor,
                                     &exemption_type, &PyLong_Type, &no_end, &provinces,
                                     &PyFrozenSet_Type, &birth_dates))
        return NULL;
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
    keep(&LIST_TYPES, list_types);
    keep(&STATUSES, statuses);
    keep(&ACTIVE, active);
    keep(&ROLES, roles);
    keep(&ID_TYPES, id_types);
    keep(&RESIDENT, resident);
    keep(&CHANNELS, channels);
    keep(&DEBTOR, debtor);
    keep(&EXEMPTION, exemption_type);
    keep(&NO_END, no_end);
    keep(&BIRTH_DATES, birth_dates);
    keep(&DAYS, days); /* last: plain() refuses to run until it is set */
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"plain", (PyCFunction)(void (*)(void))plain, METH_FASTCALL,
     "plain(row, line): (entry, subjects, exemptions) as ColumnBuilder._plain makes "
     "them, or None when the row is not in the plain form."},
    {"masks", (PyCFunction)(void (*)(void))masks, METH_FASTCALL,
     "masks(numbers, width): identity.mask_id of each, space-padded to width bytes, "
     "joined; None when one is not ASCII or longer than width."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "configure(**tables): the look-up tables plain() shares with loader.listfile."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_rowcheck", "The load's row checker in C (loader/columns.py).", -1,
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
          intern(&K_EXEMPTIONS, "exemptions") && intern(&K_CHANNEL, "channel") &&
          intern(&K_FROM, "from") && intern(&K_UNTIL, "until") &&
          intern(&K_PUBLISHED_ON, "published_on") && intern(&K_VALID_UNTIL, "valid_until") &&
          intern(&K_FILED_ON, "filed_on") && intern(&K_CASE_NUMBER, "case_number") &&
          intern(&K_COURT, "court") && intern(&S_PERSON, "PERSON") &&
          intern(&S_ORGANIZATION, "ORGANIZATION") && intern(&SEP, "\x1f") && intern(&EMPTY, "")))
        return NULL;
    ZERO = PyLong_FromLong(0);
    if (ZERO == NULL) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    if (PyModule_AddStringConstant(module, "SOURCE_DIGEST", SOURCE_DIGEST) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
