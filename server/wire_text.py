"""Which string field of a request is not UTF-8, found in the bytes as sent.

protobuf refuses a whole message for one string field that is not valid UTF-8
(``DecodeError: ... String field had bad UTF-8``) without saying which: a
gateway that cut a name in the middle of a character, or that sends GBK where
UTF-8 belongs, learned only that its batch of 500 was "not a valid
CheckBatchRequest", and a stream ended there. ``bad_text`` walks the wire format
beside the message's descriptor, names the first such field as the server names
fields (``checks[317].subject.person.name``), and hands back the bytes with every
such string read leniently (U+FFFD for each bad byte), so that they parse: the
request can then be refused as one with a bad field, and a stream can answer it
with ``error`` and go on.

Only the error path runs this: a request that parses never comes here.
"""

from __future__ import annotations

from typing import Any

#: what the caller is told of such a field
NOT_UTF8 = (
    "is not valid UTF-8, as every protobuf string must be: a character cut in two, "
    "or text in another encoding (GBK, GB 18030)"
)

#: the most fields walked, nested ones included: a batch of 1,000 checks has ~15,000;
#: past it the bytes are refused whole, as before, so that a message of 4 MiB of tiny
#: fields (1.4 million) cannot hold the event loop for seconds
MOST_FIELDS = 50_000

_STRING, _MESSAGE = 9, 11  # FieldDescriptor.TYPE_STRING, TYPE_MESSAGE
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class _Unreadable(Exception):
    """Bytes that are not a protobuf message at all: nothing to locate."""


def _varint(raw: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(raw) or shift > 63:
            raise _Unreadable
        byte = raw[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _path(at: str, field: Any, index: int) -> str:
    name = field.name
    oneof = field.containing_oneof
    if oneof is not None and not oneof.name.startswith("_"):  # "_x": proto3 optional's own
        name = f"{oneof.name}.{name}"
    if field.is_repeated:
        name = f"{name}[{index}]"
    return f"{at}.{name}" if at else name


def bad_text(raw: bytes, descriptor: Any) -> tuple[str, bytes] | None:
    """(the path of the first string field of ``raw`` that is not UTF-8, ``raw`` with
    every such string read leniently), for ``raw`` a serialised ``descriptor``
    message; None when every string is UTF-8 or the bytes are no message."""
    try:
        found = _walk(raw, descriptor, "", [MOST_FIELDS])
    except _Unreadable:
        return None
    return found if found[0] else None


def _walk(raw: bytes, descriptor: Any, at: str, left: list[int]) -> tuple[str, bytes]:
    """``left``: the fields still to be walked, shared by the nested walks."""
    out = bytearray()
    first = ""
    counts: dict[int, int] = {}
    by_number = descriptor.fields_by_number
    pos, end = 0, len(raw)
    while pos < end:
        left[0] -= 1
        if left[0] < 0:
            raise _Unreadable  # too many to walk: refused whole
        start = pos
        key, pos = _varint(raw, pos)
        number, kind = key >> 3, key & 7
        if kind == _VARINT:
            pos = _varint(raw, pos)[1]
        elif kind == _FIXED64:
            pos += 8
        elif kind == _FIXED32:
            pos += 4
        elif kind == _LENGTH:
            key_end = pos
            size, body = _varint(raw, pos)
            pos = body + size
            if pos > end:
                raise _Unreadable
            field = by_number.get(number)
            if field is not None and field.type in (_STRING, _MESSAGE):
                index = counts[number] = counts.get(number, -1) + 1
                path = _path(at, field, index)
                value = raw[body:pos]
                fixed, where = None, ""
                if field.type == _STRING:
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        fixed, where = value.decode("utf-8", "replace").encode(), path
                else:
                    where, inner = _walk(value, field.message_type, path, left)
                    if where:
                        fixed = inner
                if fixed is not None:
                    first = first or where
                    out += raw[start:key_end] + _encode_varint(len(fixed)) + fixed
                    continue
        else:  # groups (proto2 only) or not a message
            raise _Unreadable
        if pos > end:
            raise _Unreadable
        out += raw[start:pos]
    return first, bytes(out)
