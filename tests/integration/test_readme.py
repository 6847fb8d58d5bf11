"""The README's client example runs as written against a real machine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import PY, RealMachine

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_runs(real_machine: RealMachine, tmp_path: Path) -> None:
    text = README.read_text()
    block = re.search(r"## Using it\n\n```python\n(.*?)```", text, re.S)
    assert block is not None, "README has no client example"
    code = block.group(1).replace("tcp://127.0.0.1:7700", real_machine.endpoint)
    script = tmp_path / "example.py"
    script.write_text(code)
    r = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "SIGSEGV at 0x10" in r.stdout
    assert "'free'" in r.stdout


def test_the_readme_zero_copy_example_runs(real_machine: RealMachine, tmp_path: Path) -> None:
    text = README.read_text()
    block = re.search(r"Zero-copy sends and the wire:\n\n```python\n(.*?)```", text, re.S)
    assert block is not None, "README has no zero-copy example"
    code = block.group(1).replace("tcp://127.0.0.1:7700", real_machine.endpoint)
    script = tmp_path / "zerocopy.py"
    script.write_text(code)
    r = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "16 pages loaned, the wire carried the old bytes" in r.stdout
