"""The green client mirrors the async one: every call a Process or File has, its
GreenProcess or GreenFile has too, with the same parameters (greenproc imports no
gevent: it drives the async client's coroutines without a loop)."""

from __future__ import annotations

import inspect

import pytest

from machine.client.process import File, Process
from machine.stress.greenproc import GreenFile, GreenProcess


def _calls(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(fn)
    }


@pytest.mark.parametrize(("async_cls", "green_cls"), [(Process, GreenProcess), (File, GreenFile)])
def test_every_call_of_the_async_client_has_its_green_method(
    async_cls: type, green_cls: type
) -> None:
    want, got = _calls(async_cls), _calls(green_cls)
    assert set(want) <= set(got), sorted(set(want) - set(got))
    for name, sig in want.items():
        params = [(p.name, p.kind, p.default) for p in sig.parameters.values()]
        if name == "mmap":  # the green one takes a GreenFile
            params = [x for x in params if x[0] != "file"]
            mine = [x for x in _params(got[name]) if x[0] != "file"]
        else:
            mine = _params(got[name])
        assert mine == params, name


def _params(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]
