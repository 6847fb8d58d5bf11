"""MkDocs hook: the docs' links to files outside docs/ (source, tests, examples).

On GitHub a page's `[text](../tests/x.py)` opens the file; the site has no such page, so
MkDocs would call the link broken. This hook checks that the file exists in the
repository (a missing one is a warning, which fails `mkdocs build --strict` like any
broken link) and renders the link as the path in code, since the site does not carry
the repository's files."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.outside_links")
_LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)#\s]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    here = (docs / page.file.src_path).parent

    def repl(m: re.Match[str]) -> str:
        text, target = m.group(1), m.group(2)
        path = (here / target).resolve()
        if path.is_relative_to(docs) or not path.is_relative_to(root):
            return m.group(0)  # MkDocs' own validation judges it
        rel = path.relative_to(root).as_posix()
        if not path.exists():
            log.warning(
                "Doc file '%s' links to '%s', which is not in the repository",
                page.file.src_path,
                rel,
            )
        return text if text.strip("`") == rel else f"{text} (`{rel}`)"

    return _LINK.sub(repl, markdown)
