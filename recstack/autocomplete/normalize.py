"""Query text as autocomplete counts it: Unicode NFKC, control and format characters dropped,
case folded, whitespace collapsed, cut at ``max_chars``. A query made only of stop words
(``[autocomplete] stop_words``) normalizes to "" and is neither counted nor suggested."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection

_SPACE = re.compile(r"\s+")


def normalize(text: str | None, stop_words: Collection[str] = (), max_chars: int = 200) -> str:
    """The normalized query ("" for nothing left to count)."""
    if not text:
        return ""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(
        " " if c.isspace() else c for c in folded if c.isspace() or unicodedata.category(c)[0] != "C"
    )
    out = _SPACE.sub(" ", kept).strip()[:max_chars].rstrip()
    if stop_words and all(word in stop_words for word in out.split(" ")):
        return ""
    return out


def normalize_prefix(text: str | None, max_chars: int = 200) -> str:
    """A typed prefix normalized the same way, keeping one trailing space (``"star "`` completes to
    the next word, not to ``"stars"``)."""
    if not text:
        return ""
    trailing = text[-1:].isspace()
    out = normalize(text, (), max_chars)
    return out + " " if trailing and out and len(out) < max_chars else out
