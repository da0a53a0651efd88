"""Where entries sit in a journal folder, and the framing of an attempt's append-only log.

A journal folder holds, per attempt, one log ``log-<random>.jlog`` (stores that can append: the local store) made
of records ``AJL2 | body length (4 bytes, big-endian) | CRC-32 of the body (4 bytes, big-endian) | body`` (the
body is the entry's JSON; logs written before hold ``AJL1`` records with a sha256 of the body, 32 bytes, in place
of the CRC, and still read), and/or one object per entry ``<position>.json`` (stores that cannot append, such as
S3, and journals written before the log). A record that does not check out (cut short or zeroed by a machine
crash, as the log is never fsynced, or altered) ends the reading of its log: a torn tail is never replayed. The
check only has to catch damage, not forgery (anyone who can write the store can write a valid record), so the
CRC is enough; it costs a fraction of a sha256 on every live call.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from collections.abc import Iterator

from aether_prefect.services.journal._entry import Entry
from aether_prefect.services.stores.base import ObjectNotFound, ObjectStore

#: Name ending of an attempt's log.
LOG_SUFFIX = ".jlog"
_MAGIC = b"AJL2"
_HEAD = struct.Struct(">4sII")
_MAGIC_V1 = b"AJL1"  # sha256-checked records of logs written before
_HEAD_V1 = struct.Struct(">4sI32s")


def log_name() -> str:
    """A fresh name for this attempt's log (unique: attempts of one task never share a file)."""
    return f"log-{uuid.uuid4().hex}{LOG_SUFFIX}"


def frame(body: bytes) -> bytes:
    """One log record holding ``body``."""
    return _HEAD.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def records(blob: bytes) -> Iterator[bytes]:
    """The bodies of ``blob``'s records in order, up to the first one that does not check out (a torn tail)."""
    at, end = 0, len(blob)
    while at + _HEAD.size <= end:
        magic = blob[at:at + 4]
        if magic == _MAGIC:
            _, size, crc = _HEAD.unpack_from(blob, at)
            start = at + _HEAD.size
            body = blob[start:start + size]
            if len(body) != size or zlib.crc32(body) != crc:
                return
        elif magic == _MAGIC_V1 and at + _HEAD_V1.size <= end:
            _, size, digest = _HEAD_V1.unpack_from(blob, at)
            start = at + _HEAD_V1.size
            body = blob[start:start + size]
            if len(body) != size or hashlib.sha256(body).digest() != digest:
                return
        else:
            return
        yield body
        at = start + size


def entry_key(folder: str, position: int) -> str:
    """The key of one entry stored as its own object (``folder`` is '/'-terminated)."""
    return f"{folder}{position:06d}.json"


def entries_at(store: ObjectStore, key: str) -> list[Entry]:
    """The replayable entries stored at ``key``: a log's checked records, or a one-entry object; [] for anything
    else (an ordinal claim), a missing key or a torn object."""
    name = key.rsplit("/", 1)[-1]
    is_log = name.endswith(LOG_SUFFIX)
    stem = name.removesuffix(".json")
    if not is_log and not (name.endswith(".json") and stem.isdigit()):
        return []
    try:
        blob = store.get_bytes(key)
    except ObjectNotFound:
        return []
    if is_log:
        return [e for e in map(Entry.from_body, records(blob)) if e is not None]
    entry = Entry.decode(blob)
    return [entry] if entry is not None and entry.position == int(stem) else []
