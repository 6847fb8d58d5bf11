"""The docs site builds with `mkdocs build --strict`: no warning, so no broken link between
pages, no missing anchor, no missing file that a page links to outside docs/, no broken
cross-reference; the Python API page is generated from machine.client. And a planted
broken link of each kind fails the strict build, so the first test means something."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs.pages import DOCS, ROOT

BUILD_S = 120.0


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=BUILD_S,
        check=False,
    )


@pytest.mark.timeout(180)
def test_the_site_builds_strictly_with_no_warning(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    print(f"mkdocs build --strict: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr, r.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("machine.client.Machine.attach", "machine.client.Process.mmap", "Segv"):
        assert name in api, name
    assert (tmp_path / "site" / "tutorial" / "index.html").exists()


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f" {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


@pytest.mark.timeout(180)
def test_a_broken_link_anchor_or_file_fails_the_strict_build(tmp_path: Path) -> None:
    shutil.copytree(DOCS, tmp_path / "docs")
    for name in ("mkdocs.yml", "mkdocs_hooks.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    linked = tmp_path / "tests" / "integration" / "plain_msgpack_client.py"
    linked.parent.mkdir(parents=True)  # the one file outside docs/ the pages link to
    linked.touch()
    page = tmp_path / "docs" / "glossary.md"
    page.write_text(
        page.read_text()
        + "\n[a page](no-such-page.md), [an anchor](usage.md#no-such-section),"
        + " [a file](../no/such/file.py).\n"
    )
    r = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert r.returncode != 0
    for planted in ("no-such-page.md", "#no-such-section", "no/such/file.py"):
        assert planted in r.stderr, r.stderr
    assert "Aborted with 3 warnings in strict mode" in r.stdout + r.stderr, r.stdout
