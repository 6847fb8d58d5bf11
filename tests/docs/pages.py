"""Reading the docs' pages as a test does: their fenced blocks in order, with the marker
comment (`<!-- tutorial: ... -->`) that precedes a block, and the text block that shows
what a command prints."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_BLOCK = re.compile(r"(?:<!-- tutorial: (\w[\w ]*?)(?: \(.*?\))? -->\s*)?```(\w+)\n(.*?)```", re.S)


@dataclass
class Command:
    """A ```sh block: its marker ("", "skip", "terminal 1"), its body, and the ```text
    blocks after it (before the next command), which say what it prints."""

    marker: str
    body: str
    says: str = ""


def commands(page: Path) -> list[Command]:
    """The page's ```sh blocks in order, each with what the page says it prints."""
    out: list[Command] = []
    for m in _BLOCK.finditer(page.read_text()):
        marker, lang, body = m.group(1) or "", m.group(2), m.group(3)
        if lang == "sh":
            out.append(Command(marker, body))
        elif lang == "text" and out:
            out[-1].says += body
    return out
