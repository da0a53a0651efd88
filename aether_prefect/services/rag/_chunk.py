"""Text preparation for RAG: reading .txt/.md files, chunking with overlap, and BM25 tokens."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from aether_prefect.errors import RAGError

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".text")

_TOKEN_RE = re.compile(r"[0-9a-z]+")
_HEADING_RE = re.compile(r"^\s*#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_STOPWORDS = frozenset(
    """a an and are as at be by for from has have how i in is it its of on or that the this to was
    were what when where which who why will with do does did can could should would you your we our
    they their them he she his her not no but if then than so into about over also been being""".split()
)


def read_text_file(path: str | Path) -> str:
    """Read a .txt/.md file as UTF-8, raising RAGError with a fix for anything unsupported."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise RAGError(
            f"unsupported file type {p.suffix or '(none)'!r} for {str(p)!r}: RAG reads "
            f"{', '.join(SUPPORTED_SUFFIXES)} files; convert it to text and pass {{'text': ..., 'title': ...}}"
        )
    if not p.is_file():
        raise RAGError(f"file {str(p)!r} does not exist (or is not a file); check the path in the doc's 'path'")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RAGError(f"file {str(p)!r} is not valid UTF-8 ({exc.reason}); re-encode it as UTF-8") from None
    except OSError as exc:
        raise RAGError(f"cannot read {str(p)!r}: {exc.strerror}; check its permissions") from None


def title_of(text: str, fallback: str) -> str:
    """The first markdown heading of ``text``, else ``fallback`` (used for path docs without a title)."""
    m = _HEADING_RE.search(text)
    return m.group(1).strip() if m else fallback


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Split ``text`` into chunks of at most ``size`` characters overlapping by ``overlap``, cut at whitespace."""
    text = text.strip()
    if not text:
        return []
    if len(text) <= size:
        return [text]
    chunks: list[str] = []
    start = 0
    n = len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            lo = start + size // 2
            for sep in ("\n\n", ". ", "\n", " "):  # prefer paragraph, then sentence, then word boundaries
                cut = text.rfind(sep, lo, end)
                if cut > start:
                    end = cut + (1 if sep == ". " else 0)
                    break
        piece = text[start:end].strip()
        if piece:
            chunks.append(piece)
        if end >= n:
            break
        nxt = end - overlap
        if nxt <= start:
            nxt = end
        sp = text.find(" ", nxt, end)  # start the next chunk on a word boundary
        start = sp + 1 if sp != -1 and overlap > 0 else nxt
    return chunks


def tokenize(text: str) -> list[str]:
    """BM25 terms: lowercase alphanumeric words, stopwords dropped, plural 's' stripped."""
    out: list[str] = []
    for tok in _TOKEN_RE.findall(text.lower()):
        if tok in _STOPWORDS:
            continue
        if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss"):
            tok = tok[:-1]
        out.append(tok)
    return out


def term_counts(text: str) -> dict[str, int]:
    """BM25 term frequencies of ``text`` (same terms as :func:`tokenize`), counted in C then normalised per term."""
    raw = Counter(_TOKEN_RE.findall(text.lower()))
    out: dict[str, int] = {}
    for tok, n in raw.items():
        if tok in _STOPWORDS:
            continue
        if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss"):
            tok = tok[:-1]
        out[tok] = out.get(tok, 0) + n
    return out
