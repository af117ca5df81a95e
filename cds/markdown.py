"""Text into CDS Hooks card markdown (GitHub Flavored Markdown) that renders as that text, nothing else.

A card's detail is rendered by the EHR as GFM. Lab text, code displays, criterion wording and
evidence notes come from records and catalogues we do not control, so every piece of such text
goes through `text()`: it can then not open emphasis, a link, an image, a heading, a list, a
table cell, raw HTML or an autolink that navigates the EHR away. Written here because no
Python library escapes *for* CommonMark (the parsers only read it); tests/test_markdown_escape.py
proves it with hypothesis against markdown-it-py (CommonMark + GFM tables, strikethrough, linkify).

How: CommonMark lets any ASCII punctuation character be backslash-escaped (spec 2.4), which
turns it into a literal character; every punctuation character that can start markup is
escaped. Autolinks of GFM and of linkifiers are recognised in the text *after* escapes are
read (`www.`, `scheme://`, `user@host`, `host.tld`), so a word joiner (U+2060, invisible, no
line break) is put where the recogniser would match. Line breaks become spaces: a piece of text
always stays inside the line or table cell it was put in.
"""

from __future__ import annotations

import re

# Kept literal: space-like and sentence punctuation that starts no construct mid-line.
_SAFE = set(",;/%?'\"")
_PUNCT = {chr(c) for c in range(0x21, 0x7F) if not chr(c).isalnum()} - _SAFE
_JOINER = "\u2060"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")
# Where an autolink recogniser would match: after "www", inside "scheme:", after "@", between "host.tld".
_LINKISH = re.compile(r"(?i)(?<=www)(?=\.)|(?<=[a-z0-9]:)(?=[/a-z0-9])|(?<=@)|(?<=[a-z0-9]\.)(?=[a-z])")


def text(value: object, limit: int | None = None) -> str:
    """`value` as markdown that renders exactly as its text (shortened at a word to `limit` chars)."""
    raw = _CONTROL.sub(" ", str(value))
    raw = re.sub(r"\s+", " ", raw).strip()
    if limit is not None:
        raw = shorten(raw, limit)
    raw = _LINKISH.sub(_JOINER, raw)
    return "".join("\\" + ch if ch in _PUNCT else ch for ch in raw)


def shorten(value: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary with an ellipsis (never mid-word)."""
    value = re.sub(r"\s+", " ", value).strip()
    if len(value) <= limit:
        return value
    cut = value[: max(limit - 1, 1)]
    if value[len(cut)] != " ":  # the cut falls inside a word: go back to its start
        space = cut.rfind(" ")
        cut = cut[:space] if space > 0 else value.split(" ", 1)[0]  # one long word stays whole
    return cut.rstrip(" ,;:-–—(/") + "…"
