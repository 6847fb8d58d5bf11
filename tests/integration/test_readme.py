"""The README's client example runs as written against a real machine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import PY, RealMachine

README = Path(__file__).resolve().parents[2] / "README.md"


def _run_block(after: str, endpoint: str, script: Path) -> str:
    """Run the README's Python block that follows `after`, against `endpoint`. => stdout."""
    block = re.search(re.escape(after) + r"\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, f"README has no example after {after!r}"
    script.write_text(block.group(1).replace("tcp://127.0.0.1:7700", endpoint))
    r = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_readme_example_runs(real_machine: RealMachine, tmp_path: Path) -> None:
    out = _run_block("## Using it", real_machine.endpoint, tmp_path / "example.py")
    assert "SIGSEGV at 0x10" in out
    assert "SIGBUS at 0x" in out
    assert "beyond the end" in out
    assert "b'\\x01\\x00\\x00\\x00'" in out  # mincore after MADV_FREE of the second page
    assert "'free'" in out


def test_the_readme_zero_copy_example_runs(real_machine: RealMachine, tmp_path: Path) -> None:
    out = _run_block("Zero-copy sends and the wire:", real_machine.endpoint, tmp_path / "z.py")
    assert "16 pages loaned, the wire carried the old bytes" in out
