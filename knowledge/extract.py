"""Text from uploaded files (.txt, .md, .html). Pure: no Django.

Raises UnreadableFile with a reason the API returns as a 400 on the file field.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import PurePath

MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = {".txt", ".text", *MARKDOWN_SUFFIXES}
HTML_SUFFIXES = {".html", ".htm"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES
# Characters that do not occur in text files; a file full of them is binary that
# happened to decode.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


class UnreadableFile(ValueError):
    pass


def decode(data: bytes) -> str:
    """UTF-8 (with or without BOM), UTF-16 with a BOM, else GB18030 (common for
    Chinese text files); anything that still looks binary is refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates = ["utf-16"]
    else:
        candidates = ["utf-8-sig", "gb18030"]
    for encoding in candidates:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if len(_CONTROL.findall(text)) <= len(text) // 1000:
            return text
    raise UnreadableFile("Not a text file: it cannot be decoded as UTF-8 or GB18030.")


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page, one line per block element."""

    SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    BLOCKS = {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl",
        "dt", "figcaption", "footer", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
        "table", "td", "th", "tr", "ul",
    }  # fmt: skip

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self.skipping = 0
        self.in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self.in_title = True
        elif tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        elif tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.in_title:
            self.title_parts.append(data)
        elif not self.skipping:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML document; whitespace collapsed within lines."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    text = "\n".join(line for line in lines if line)
    return " ".join("".join(parser.title_parts).split()), text


_FENCE = re.compile(r"^\s*(```|~~~)")
_ATX_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_SETEXT_UNDERLINE = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_BLOCK_PREFIX = re.compile(r"^\s{0,3}(>\s?)+|^\s*([-*+]|\d{1,9}[.)])\s+(\[[ xX]\]\s+)?")
_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # image: its alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # link: its text
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # reference link
    (re.compile(r"<(https?://[^>]+)>"), r"\1"),  # autolink
    (re.compile(r"`+([^`]+?)`+"), r"\1"),  # code span
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # strong
    (re.compile(r"(?<!\*)\*(?=\S)(.+?)(?<=\S)\*(?!\*)"), r"\1"),  # emphasis
    (re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)"), r"\1"),  # not snake_case
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"\1"),  # strikethrough
]
_LINK_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+\S+")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _inline_text(line: str) -> str:
    for pattern, replacement in _INLINE:
        line = pattern.sub(replacement, line)
    return line


def markdown_to_text(markdown: str) -> tuple[str, str]:
    """(title, text) of a Markdown document: the title is its first heading, the
    text keeps every line's words without the syntax (headings, emphasis, links,
    lists, quotes, code fences, tables), so that passages quoted from it read as
    text ("# 人工智能概述" becomes "人工智能概述")."""
    title = ""
    lines: list[str] = []
    in_fence = False
    for raw in markdown.splitlines():
        if _FENCE.match(raw):
            in_fence = not in_fence
            continue
        if in_fence:
            lines.append(raw)  # code is kept as it is
            continue
        if _RULE.match(raw) or _LINK_DEFINITION.match(raw) or _TABLE_RULE.match(raw):
            continue
        if _SETEXT_UNDERLINE.match(raw) and lines and lines[-1].strip():
            title = title or lines[-1].strip()  # the line above was a heading
            continue
        heading = _ATX_HEADING.match(raw)
        if heading:
            line = _inline_text(heading.group(1))
            title = title or line.strip()
        else:
            line = _inline_text(_BLOCK_PREFIX.sub("", raw))
        if line.strip().startswith("|"):
            line = " ".join(cell.strip() for cell in line.strip().strip("|").split("|"))
        lines.append(line.rstrip())
    text = "\n".join(lines).strip("\n")
    return " ".join(title.split()), re.sub(r"\n{3,}", "\n\n", text)


def text_of_named(name: str, text: str) -> tuple[str, str]:
    """(title, text) of a text that came with a file name (the old API's
    context_files): Markdown and HTML by their suffix, anything else as it is."""
    path = PurePath(name or "text")
    suffix = path.suffix.lower()
    title = ""
    if suffix in HTML_SUFFIXES:
        title, text = html_to_text(text)
    elif suffix in MARKDOWN_SUFFIXES:
        title, text = markdown_to_text(text)
    return title or path.stem or name, text


def text_from_upload(name: str, data: bytes) -> tuple[str, str]:
    """(title, text) of an uploaded file; the title is the HTML title or the
    Markdown file's first heading, else the file name without its suffix."""
    path = PurePath(name or "upload")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UnreadableFile(
            f"Unsupported file type {suffix or '(none)'!r}; use one of "
            + ", ".join(sorted(SUFFIXES))
        )
    text = decode(data)
    title = ""
    if suffix in HTML_SUFFIXES:
        title, text = html_to_text(text)
    elif suffix in MARKDOWN_SUFFIXES:
        title, text = markdown_to_text(text)
    if not text.strip():
        raise UnreadableFile("The file is empty (no text in it).")
    return title or path.stem, text
