"""`--limit` on the command line: repeatable, each applied on top of the ones before."""

from __future__ import annotations

import pytest

from machine.cli.parser import parser
from machine.limits import Limits


def test_limit_is_repeatable_and_later_values_win() -> None:
    a = parser().parse_args(
        ["up", "--limit", "procs=64", "--limit", "files=32,maxproc=128", "--limit", "procs=8"]
    )
    assert (a.limit.procs, a.limit.files, a.limit.maxproc) == (8, 32, 128)
    assert a.limit.vsize == Limits().vsize


def test_limit_takes_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UVM_MACHINE_LIMITS", "procs=5,files=7")
    a = parser().parse_args(["up", "--limit", "files=9"])
    assert (a.limit.procs, a.limit.files) == (5, 9)


@pytest.mark.parametrize("bad", ["nosuch=1", "procs", "procs=0", "procs=x"])
def test_a_bad_limit_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["up", "--limit", bad])
    assert e.value.code == 2
    assert "--limit" in capsys.readouterr().err
