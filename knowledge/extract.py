"""Text from uploaded files (.txt, .md, .html). Pure: no Django.

Raises UnreadableFile with a reason the API returns as a 400 on the file field.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import PurePath

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown"}
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


def text_from_upload(name: str, data: bytes) -> tuple[str, str]:
    """(title, text) of an uploaded file; the title is the HTML title or the file
    name without its suffix."""
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
    if not text.strip():
        raise UnreadableFile("The file is empty (no text in it).")
    return title or path.stem, text
