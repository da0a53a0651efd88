"""KV key <-> Prefect Variable name mapping: any str key to a legal, collision-free, readable name.

Variable names must match ``^[a-z0-9-_]*$`` and be at most 255 characters. A key
is encoded token by token, so the encoding of a prefix is a prefix of the
encoding (prefix scans can ask the server for a name prefix):

- ``a-z``, ``0-9`` and ``-`` are kept as they are;
- an uppercase ASCII letter ``X`` becomes ``_x`` (so ``"Ab"`` and ``"ab"`` differ);
- ``_`` becomes ``__``;
- any other character becomes ``_`` + one digit ``n`` (2-6) + ``n`` lowercase hex
  digits of its code point (``"."`` -> ``_22e``, ``"к"`` -> ``_343a``).

The token code is prefix-free, hence injective. When the encoding does not fit,
the name is the first part of the encoding, ``-`` and 24 hex digits of the key's
sha256, and has exactly the maximum length, while every short name is shorter:
long and short names never collide. The original key always travels in the
stored value envelope, so names never need decoding.

Full names: ``<namespace>_k_<encoding>`` for values, ``<namespace>_l_<encoding>``
for locks. Namespaces are ``[a-z0-9-]`` only, so the first ``_`` ends the
namespace and two namespaces never share a name or a name prefix.
"""

from __future__ import annotations

import hashlib
import re

from aether_prefect.errors import KVValidationError

MAX_NAME = 255
_HASH_HEX = 24
_KEEP = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
VALUE_KIND = "k"
LOCK_KIND = "l"


def check_namespace(namespace: str) -> str:
    """Validate a KV namespace (``[a-z0-9-]``, 1-40 characters); KVValidationError otherwise."""
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise KVValidationError(
            f"kv_namespace {namespace!r} is not valid: use 1-40 characters of a-z, 0-9 and '-' "
            "(set AetherConfig.kv_namespace or the kv_namespace= override)"
        )
    return namespace


def check_key(key: object) -> str:
    """A KV key must be a str (any content); KVValidationError otherwise."""
    if not isinstance(key, str):
        raise KVValidationError(f"KV keys must be str, got {type(key).__name__} {key!r}; convert it with str() first")
    return key


def _token(ch: str) -> str:
    if ch in _KEEP:
        return ch
    if "A" <= ch <= "Z":
        return "_" + ch.lower()
    if ch == "_":
        return "__"
    code = f"{ord(ch):x}"
    if len(code) < 2:
        code = "0" + code
    return f"_{len(code)}{code}"


def encode(key: str) -> str:
    """Token-by-token encoding of ``key`` (unbounded length)."""
    return "".join(_token(ch) for ch in key)


def name_prefix(namespace: str, kind: str = VALUE_KIND) -> str:
    """The name prefix every variable of ``kind`` in ``namespace`` starts with."""
    return f"{namespace}_{kind}_"


def budget(namespace: str, kind: str = VALUE_KIND) -> int:
    """How many characters the encoded key may take in a name of this namespace."""
    return MAX_NAME - len(name_prefix(namespace, kind))


def variable_name(namespace: str, key: str, kind: str = VALUE_KIND) -> str:
    """The Prefect Variable name holding ``key`` (``kind`` "k": the value, "l": its lock)."""
    check_key(key)
    head = name_prefix(namespace, kind)
    room = MAX_NAME - len(head)
    enc = encode(key)
    if len(enc) < room:
        return head + enc
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    return head + enc[: room - _HASH_HEX - 1] + "-" + digest


def scan_name_prefix(namespace: str, key_prefix: str) -> str:
    """A name prefix every variable whose key starts with ``key_prefix`` has (maybe shorter than exact)."""
    head = name_prefix(namespace)
    room = budget(namespace) - _HASH_HEX - 1
    return head + encode(key_prefix)[:room]
