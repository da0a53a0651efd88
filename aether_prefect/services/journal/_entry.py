"""One journal entry: the fingerprint of a request and the recorded result of the call that succeeded.

Its JSON is stored with a sha256 digest, either as a record of an attempt's log (``_log.py``, local store) or as
one object ``<sha256 hex>\n<JSON>`` (stores that cannot append, and journals written before the log): the
journal writes without fsync (a lost entry only means paying for the call again), so after a machine crash a
file may hold partial or zeroed bytes; the digest makes sure such a torn entry is never replayed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from pydantic import BaseModel, Field

#: Entry format version; an entry of another version is never replayed (2: digest-framed).
VERSION = 2


def fingerprint(request: Any) -> str:
    """BLAKE2b-128 (32 hex digits) of the request's canonical JSON (orjson, keys sorted): only a hash is stored,
    never the request (nor a secret in it). A request orjson does not take (a non-string key, a huge int) is
    canonicalized by ``json.dumps`` instead. BLAKE2b is CPython's own code: on a live call it costs about half of
    OpenSSL's sha256, which fingerprinted entries written before (see :func:`older_fingerprints`).
    """
    try:
        canon = orjson.dumps(request, option=orjson.OPT_SORT_KEYS, default=_opaque)
    except TypeError:
        canon = _CANON.encode(request).encode()
    return hashlib.blake2b(canon, digest_size=16).hexdigest()


def older_fingerprints(request: dict[str, Any]) -> Iterator[str]:
    """The sha256 fingerprints entries written before carry for ``request``, newest kind first: over orjson's
    canonical JSON, then over ``json.dumps``'s (:func:`legacy_fingerprint`). Computed only when a lookup finds an
    entry that does not match the current fingerprint, never on a live call."""
    try:
        yield hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS, default=_opaque)).hexdigest()
    except TypeError:
        pass
    yield legacy_fingerprint(request)


def legacy_fingerprint(request: dict[str, Any]) -> str:
    """The fingerprint of the oldest entries: sha256 of ``json.dumps``'s canonical JSON (about three times
    orjson's cost)."""
    return hashlib.sha256(_CANON.encode(request).encode()).hexdigest()


def _opaque(value: Any) -> str:
    """Stand-in for a value JSON cannot hold: its type only (an address in a repr would differ every attempt)."""
    if isinstance(value, (set, frozenset)):
        return json.dumps(sorted(map(str, value)))
    if hasattr(value, "model_dump"):
        return json.dumps(value.model_dump(mode="json"), sort_keys=True, default=str)
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


#: ``json.dumps(request, sort_keys=True, separators=(",", ":"), default=_opaque, ensure_ascii=False)``, made once:
#: ``json.dumps`` with any option builds a new encoder per call (the same text, at twice the cost).
_CANON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_opaque, ensure_ascii=False)


def entry_body(kind: str, position: int, fingerprint: str, result: Any, *, usage: list[Any] | None = None,
               pieces: list[str] | None = None, last_response: Any = None,
               needles: Iterable[bytes] = ()) -> bytes | None:
    """The JSON body of the entry of a call that just succeeded (what :meth:`Entry.body` gives for the same
    fields), or None when it is not journaled: a needle (see :func:`secret_needles`) is in it, or a value JSON
    cannot hold. Written with orjson straight from the fields (no model built: this runs on every live call);
    a value orjson does not take (a pydantic model, a non-string key) goes through :class:`Entry` instead.
    """
    try:
        data = orjson.dumps({"v": VERSION, "kind": kind, "position": position, "fingerprint": fingerprint,
                             "created": time.time(), "result": result, "usage": usage or [], "pieces": pieces,
                             "last_response": last_response})
    except (TypeError, ValueError):
        try:
            data = Entry(kind=kind, position=position, fingerprint=fingerprint, result=result, usage=usage or [],
                         pieces=pieces, last_response=last_response).model_dump_json().encode()
        except (TypeError, ValueError):
            return None  # a result JSON cannot hold: the call stays live on retries
    for needle in needles:
        if needle in data:
            return None
    return data


class Entry(BaseModel):
    """A call that succeeded: where it sat in the task's sequence, what it asked, what it got and cost."""

    v: int = VERSION
    kind: str
    position: int = Field(ge=0)
    fingerprint: str
    created: float = Field(default_factory=time.time)
    result: Any = None
    usage: list[tuple[str, str, int, int, int]] = Field(
        default_factory=list, description="(profile, model, prompt, completion, total) per accounted request."
    )
    pieces: list[str] | None = None
    last_response: Any = None

    def body(self, needles: Iterable[str]) -> bytes | None:
        """The entry as JSON bytes (unframed), or None when a needle (a secret as written in JSON, see
        :func:`secret_needles`) appears in it (then it is not journaled)."""
        try:
            text = self.model_dump_json()
        except (TypeError, ValueError):
            return None  # a result JSON cannot hold: the call stays live on retries
        if any(n in text for n in needles):
            return None
        return text.encode()

    def encode(self, needles: Iterable[str]) -> bytes | None:
        """The entry as one digest-framed object (``<sha256 hex>\n<JSON>``: the one-object-per-entry layout, used
        on stores that cannot append), or None when it is not journaled (see :meth:`body`)."""
        data = self.body(needles)
        return None if data is None else object_bytes(data)

    @classmethod
    def decode(cls, data: bytes) -> "Entry | None":
        """The entry in one object made by :meth:`encode`, None when it is torn, unreadable or of another
        format version."""
        digest, sep, body = data.partition(b"\n")
        if not sep or hashlib.sha256(body).hexdigest().encode() != digest:
            return None
        return cls.from_body(body)

    @classmethod
    def from_body(cls, body: bytes) -> "Entry | None":
        """The entry in JSON ``body`` whose digest was checked already; None if unreadable or of another version."""
        try:
            entry = cls.model_validate_json(body)
        except ValueError:
            return None
        return entry if entry.v == VERSION else None


def object_bytes(body: bytes) -> bytes:
    """An entry's JSON ``body`` framed as one object: ``<sha256 hex>\n<body>`` (see :meth:`Entry.decode`)."""
    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def secret_needles(secrets: Iterable[str]) -> list[str]:
    """What to look for in an encoded entry: every secret of 4+ characters, raw and JSON-escaped (non-ASCII
    escaped, as ``json.dumps`` writes it, and kept, as pydantic and orjson write it)."""
    out: dict[str, None] = {}
    for s in sorted(secrets, key=len, reverse=True):
        if s and len(s) >= 4:
            out[s] = None
            out[json.dumps(s)[1:-1]] = None
            out[json.dumps(s, ensure_ascii=False)[1:-1]] = None
    return list(out)
