"""Markdown escaping holds for hostile text (hypothesis): lab text, displays and codes that go into a
card's detail render as exactly that text, in every place the card puts them (a paragraph, a
list item after a bold label, a GFM table cell), and never as emphasis, a link, an image, code,
strikethrough, a heading, a list, a table or HTML.

The renderer is markdown-it-py with its "gfm-like" preset: CommonMark plus GFM tables,
strikethrough and linkify (autolinks of bare URLs, www. and e-mail addresses), raw HTML on, as
permissive as the CDS clients that render cards.
"""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

from cds import markdown as M

MD = MarkdownIt("gfm-like")
JOINER = "\u2060"
SAFE_INLINE = {"text", "softbreak", "hardbreak"}

# Text with a lot of markdown in it: punctuation, URLs, HTML, entities, list and heading starts.
PIECES = st.sampled_from([
    "*", "**", "_", "__", "`", "```", "~", "~~", "[", "]", "(", ")", "![", "<", ">", "&", "&amp;", "&#60;", "#", "##",
    "-", "+", "1.", "1)", "|", "\\", "!", "=", "===", "---", "http://evil.example/x", "https://a.b/c?d=e",
    "www.evil.com", "mailto:a@b.co", "a@b.co", "javascript:alert(1)", "<script>alert(1)</script>", "<b>", "</b>",
    "<http://x.y>", "[x](http://e.com)", "![i](http://e.com/i.png)", "10*9/L", "{score}", "http://loinc.org|5196-1",
    "evil.com", ":", "::", "\n", "\n\n", "\t", "    ", " ", "$", "^", "{", "}", "@", "'", '"', "%",
])
HOSTILE = st.lists(st.one_of(PIECES, st.text(max_size=6)), max_size=25).map("".join)


def _flatten(tokens: list[Token]) -> list[Token]:
    out: list[Token] = []
    for t in tokens:
        out.append(t)
        if t.children:
            out += _flatten(t.children)
    return out


def _visible(tokens: list[Token]) -> str:
    return "".join(t.content for t in _flatten(tokens) if t.type == "text").replace(JOINER, "")


def _expected(value: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[\x00-\x1f\x7f\u2028\u2029\u0085]", " ", value)).strip()


def _only_text(tokens: list[Token], allowed_blocks: set[str]) -> None:
    for t in tokens:
        if t.type == "inline":
            bad = [c.type for c in t.children or [] if c.type not in SAFE_INLINE]
            assert not bad, bad
        else:
            assert t.type in allowed_blocks, t.type


@settings(max_examples=400, deadline=None)
@given(HOSTILE)
@example("*emphasis* _x_ **strong** [link](http://evil.example) <img src=x onerror=alert(1)> www.evil.com")
@example("http://loinc.org|5196-1 10*9/L mL/min/{1.73_m2}")
@example("# heading")
@example("1. list")
@example("- item")
@example("&lt;b&gt; &#x3C;")
@example("`code`")
@example("\\*")
def test_escaped_text_renders_as_itself_in_a_paragraph(value: str) -> None:
    tokens = MD.parse(M.text(value))
    expected = _expected(value)
    if not expected:
        assert not [t for t in tokens if t.type == "inline" and t.content]
        return
    _only_text(tokens, {"paragraph_open", "paragraph_close"})
    assert _visible(tokens) == expected


@settings(max_examples=300, deadline=None)
@given(HOSTILE, HOSTILE)
def test_escaped_text_after_a_bold_label_in_a_list_item(label: str, value: str) -> None:
    line = f"- **{M.text(label) or 'x'}:** {M.text(value)}"
    tokens = MD.parse(line)
    blocks = {"bullet_list_open", "bullet_list_close", "list_item_open", "list_item_close", "paragraph_open",
              "paragraph_close"}
    for t in tokens:
        assert t.type in blocks | {"inline"}, t.type
    [inline] = [t for t in tokens if t.type == "inline"]
    kinds = [c.type for c in inline.children or []]
    assert kinds.count("strong_open") == 1 and kinds.count("strong_close") == 1, kinds
    assert set(kinds) <= SAFE_INLINE | {"strong_open", "strong_close"}, kinds
    assert len([t for t in tokens if t.type == "list_item_open"]) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(HOSTILE, min_size=2, max_size=2))
def test_escaped_text_stays_in_its_table_cell(cells: list[str]) -> None:
    table = "| a | b |\n|---|---|\n" + "| " + " | ".join(M.text(c) for c in cells) + " |"
    tokens = MD.parse(table)
    tds = [t for t in tokens if t.type == "td_open"]
    assert len(tds) == 2, "no cell split, no cell lost"
    inlines = [t for t in tokens if t.type == "inline"][2:]
    for inline, cell in zip(inlines, cells, strict=False):
        assert all(c.type in SAFE_INLINE for c in inline.children or []), [c.type for c in inline.children or []]
        assert _visible([inline]) == _expected(cell)


def test_the_cards_bug_cases() -> None:
    """The cases the integrator met: 10*9/L lost its asterisks, a code became a link."""
    html = MD.render(M.text("WBC 3.6 10*9/L; http://loinc.org|5196-1"))
    assert "10*9/L" in html and "<em>" not in html and "<a " not in html
