"""Profiles: named sets of policy knobs (uvm-semantics.md section 13).

A profile is a TOML file with `name`, `description` and a `[knobs]` table.
The four shipped ones live in machine/profiles/; `--profile FILE` loads a
user's own. Every knob must be known and hold one of its allowed values;
anything else is refused at load time with a clear error.

Each role reads the knobs it acts on (docs/design.md, "Profiles"): the mmu
KENTER_MODE and PPP_WIRED; uvm ERA, QUEUE_INVARIANT, PPP_WIRED, LOAN_KVA and
DIAGNOSTIC; the page daemon PD_POLICY, PD_WIRED_CHECK, DEACT_MODE; net
LOAN_THRESHOLD.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

KNOBS: dict[str, tuple[Any, ...]] = {
    "ERA": ("1999", "2002", "modern"),
    "KENTER_MODE": ("unmanaged", "managed"),
    "PPP_WIRED": ("remove", "skip", "panic"),
    "PD_WIRED_CHECK": ("none", "skip_wired"),
    "QUEUE_INVARIANT": ("enforced", "violated"),
    "DEACT_MODE": ("revoke", "refbit"),
    "LOAN_KVA": ("none", "kernel_object"),
    "DIAGNOSTIC": (True, False),
    "PD_POLICY": ("scan1999", "clock"),
}
INT_KNOBS = {"LOAN_THRESHOLD": (-1, 1 << 30)}
SHIPPED = ("bug1999", "thorpe", "silvers", "modern")
DEFAULT_PROFILE = "modern"


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    knobs: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def _validate(data: dict[str, Any], source: str) -> Profile:
    knobs = data.get("knobs")
    if not isinstance(knobs, dict):
        raise ProfileError(f"{source}: no [knobs] table")
    for k, v in knobs.items():
        if k == "PD_POLICY" and isinstance(v, str) and v.startswith("python:"):
            continue  # a user's own policy class, "python:module:Class" (loaded by pdaemon)
        if k in KNOBS:
            if v not in KNOBS[k] or isinstance(v, bool) != isinstance(KNOBS[k][0], bool):
                raise ProfileError(f"{source}: {k} = {v!r}; allowed: {list(KNOBS[k])}")
        elif k in INT_KNOBS:
            lo, hi = INT_KNOBS[k]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ProfileError(f"{source}: {k} = {v!r}; allowed: integer {lo}..{hi}")
        else:
            raise ProfileError(f"{source}: unknown knob {k!r}")
    missing = sorted((set(KNOBS) | set(INT_KNOBS)) - set(knobs))
    if missing:
        raise ProfileError(f"{source}: knobs missing: {', '.join(missing)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{source}: no name")
    return Profile(name, str(data.get("description", "")), dict(knobs), source)


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a user's TOML file by path. => ProfileError."""
    if name_or_path in SHIPPED:
        text = resources.files("machine.profiles").joinpath(f"{name_or_path}.toml").read_text()
        source = f"profile {name_or_path}"
    else:
        p = Path(name_or_path)
        if not p.is_file():
            raise ProfileError(
                f"no profile {name_or_path!r}: use one of {', '.join(SHIPPED)} or a TOML file"
            )
        text, source = p.read_text(), str(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{source}: {e}") from None
    return _validate(data, source)


def with_overrides(base: Profile, overrides: dict[str, Any], where: Path, name: str = "") -> str:
    """Write `base` with some knobs changed as a TOML profile file in `where`. => what
    --profile takes: the base itself (its name or file) when nothing is overridden,
    else the new file's path. Booleans, integers and strings are TOML as JSON writes them."""
    if not overrides:
        return base.source if base.source.endswith(".toml") else base.name
    name = name or base.name + "+" + "+".join(f"{k}={v}" for k, v in overrides.items())
    lines = [
        f"name = {json.dumps(name)}",
        f"description = {json.dumps(base.description + ' (with overrides)')}",
        "",
        "[knobs]",
        *(f"{k} = {json.dumps(v)}" for k, v in {**base.knobs, **overrides}.items()),
    ]
    path = where / f"{name.replace('/', '_')}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)
