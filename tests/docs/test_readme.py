"""The README's and docs/usage.md's client examples run as written against a real machine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import PY, RealMachine

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
USAGE = ROOT / "docs" / "usage.md"


def _run_block(page: Path, after: str, endpoint: str, script: Path) -> str:
    """Run the page's Python block that follows `after`, against `endpoint`. => stdout."""
    block = re.search(re.escape(after) + r".*?```python\n(.*?)```", page.read_text(), re.S)
    assert block is not None, f"{page.name} has no example after {after!r}"
    script.write_text(block.group(1).replace("tcp://127.0.0.1:7700", endpoint))
    r = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_readme_ten_line_example_prints_what_the_readme_says(
    real_machine: RealMachine, tmp_path: Path
) -> None:
    out = _run_block(README, "## A client in ten lines", real_machine.endpoint, tmp_path / "t.py")
    text = README.read_text().split("## A client in ten lines", 1)[1]
    said = re.search(r"```\n\nIt prints `(.*?)`", text)
    assert said is not None
    assert out.strip() == said.group(1)
    body = re.search(r"```python\n(.*?)```", text, re.S)
    assert body is not None
    # ten lines of work: the function's body, without the imports and the asyncio.run line
    work = [ln for ln in body.group(1).splitlines() if ln.startswith("    ")]
    assert len(work) <= 10


def test_the_usage_example_runs(real_machine: RealMachine, tmp_path: Path) -> None:
    out = _run_block(USAGE, "## Using it", real_machine.endpoint, tmp_path / "example.py")
    assert "SIGSEGV at 0x10" in out
    assert "SIGBUS at 0x" in out
    assert "beyond the end" in out
    assert "b'\\x01\\x00\\x00\\x00'" in out  # mincore after MADV_FREE of the second page
    assert "'free'" in out


def test_the_usage_zero_copy_example_runs(real_machine: RealMachine, tmp_path: Path) -> None:
    out = _run_block(
        USAGE, "Zero-copy sends and the wire:", real_machine.endpoint, tmp_path / "z.py"
    )
    assert "16 pages loaned, the wire carried the old bytes" in out


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README.read_text().split("## Two commands")[1])
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert blocks[1] in ci, blocks[1]
    assert blocks[0].startswith("python3 -m venv .venv && .venv/bin/pip install -q -e . &&")


def test_the_readme_is_a_landing_page_and_no_user_doc_names_an_issue() -> None:
    assert len(README.read_text().splitlines()) <= 200
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            assert not re.search(r"\bissues?\b", line, re.I), f"{page.name}:{n}: {line}"
