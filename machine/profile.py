"""Profiles: named sets of policy knobs (uvm-semantics.md section 13).

A profile is a TOML file with `name`, `description` and a `[knobs]` table.
The four shipped ones live in machine/profiles/; `--profile FILE` loads a
user's own. Every knob must be known and hold one of its allowed values;
anything else is refused at load time with a clear error.

A profile is parsed and checked once (load_profile) into a typed object:
`Profile.settings` holds every knob as a typed field (no role reads a knob
by its string name, and none has a silent default), and `Profile.rules`
turns the era and the fault-injection knobs into the named decisions the
cores ask (machine.rules). `Profile.knobs` keeps the TOML table as written,
for display and overrides.

Each role reads the settings it acts on (docs/design.md, "Profiles"): the mmu
kenter_mode and ppp_wired; uvm the rules, diagnostic and pd_policy (its
wake-up targets, machine.tuning); the page daemon pd_policy, pd_wired_check,
deact_mode, diagnostic; net loan_threshold.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

from machine.rules import Era, Rules

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
    "REQUEUE_FIX": ("applied", "missing"),
}
INT_KNOBS = {"LOAN_THRESHOLD": (-1, 1 << 30)}
#: Knobs added after profiles were first written: a profile without them gets these
#: values (the behaviour before the knob existed), so a user's older file still loads.
DEFAULTS: dict[str, Any] = {"REQUEUE_FIX": "applied"}
SHIPPED = ("bug1999", "thorpe", "silvers", "modern")
DEFAULT_PROFILE = "modern"


class ProfileError(ValueError):
    pass


KenterMode = Literal["unmanaged", "managed"]
PppWired = Literal["remove", "skip", "panic"]
PdWiredCheck = Literal["none", "skip_wired"]
QueueInvariant = Literal["enforced", "violated"]
DeactMode = Literal["revoke", "refbit"]
LoanKva = Literal["none", "kernel_object"]
RequeueFix = Literal["applied", "missing"]


@dataclass(frozen=True)
class Settings:
    """Every knob of a profile, typed (uvm-semantics.md section 13). Built only from a
    validated table (Settings.of), so each field holds one of its allowed values."""

    era: Era
    kenter_mode: KenterMode
    ppp_wired: PppWired
    pd_wired_check: PdWiredCheck
    queue_invariant: QueueInvariant
    deact_mode: DeactMode
    loan_kva: LoanKva
    diagnostic: bool
    pd_policy: str  # "scan1999", "clock" or "python:module:Class"
    loan_threshold: int  # sock_loan_thresh in bytes; -1: net never loans
    #: [cvs139] (2002): the last kernel loan of a page an anon still borrows re-queues it;
    #: "missing" injects the bug it fixed (scenario 27: the page is never paged out).
    requeue_fix: RequeueFix = "applied"

    @classmethod
    def of(cls, knobs: dict[str, Any]) -> Settings:
        """=> the settings of a validated knob table (_validate)."""
        return cls(
            era=Era(knobs["ERA"]),
            kenter_mode=cast(KenterMode, knobs["KENTER_MODE"]),
            ppp_wired=cast(PppWired, knobs["PPP_WIRED"]),
            pd_wired_check=cast(PdWiredCheck, knobs["PD_WIRED_CHECK"]),
            queue_invariant=cast(QueueInvariant, knobs["QUEUE_INVARIANT"]),
            deact_mode=cast(DeactMode, knobs["DEACT_MODE"]),
            loan_kva=cast(LoanKva, knobs["LOAN_KVA"]),
            diagnostic=bool(knobs["DIAGNOSTIC"]),
            pd_policy=str(knobs["PD_POLICY"]),
            loan_threshold=int(knobs["LOAN_THRESHOLD"]),
            requeue_fix=cast(RequeueFix, knobs["REQUEUE_FIX"]),
        )

    @cached_property
    def rules(self) -> Rules:
        """The era's decisions with this profile's injections (machine.rules); built once."""
        return Rules.of(
            self.era,
            inject_queue_violation=self.queue_invariant == "violated",
            page_protect_panics_on_wired=self.ppp_wired == "panic",
            kernel_fault_zero_fills=self.loan_kva == "kernel_object",
            requeue_fix_missing=self.requeue_fix == "missing",
            pd_skips_wired=self.pd_wired_check == "skip_wired",
        )


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    knobs: dict[str, Any] = field(default_factory=dict)  # the TOML table as written
    source: str = ""

    @cached_property
    def settings(self) -> Settings:
        """The knobs, typed; built once (the table was validated by load_profile)."""
        return Settings.of(self.knobs)

    @cached_property
    def rules(self) -> Rules:
        """The era's named decisions and the fault-injection knobs' (machine.rules)."""
        return self.settings.rules


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
    knobs = {**DEFAULTS, **knobs}
    missing = sorted((set(KNOBS) | set(INT_KNOBS)) - set(knobs))
    if missing:
        raise ProfileError(f"{source}: knobs missing: {', '.join(missing)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{source}: no name")
    profile = Profile(name, str(data.get("description", "")), dict(knobs), source)
    profile.settings  # noqa: B018 -- built once, here, from the validated table
    return profile


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a user's TOML file by path. => ProfileError."""
    if name_or_path in SHIPPED:
        text = _shipped_text(name_or_path)
        source = f"profile {name_or_path}"
    else:
        p = Path(name_or_path)
        if not p.is_file():
            raise ProfileError(
                f"no profile {name_or_path!r}: use one of {', '.join(SHIPPED)} or a TOML file"
            )
        text, source = p.read_text(), str(p)
    try:
        data = _parsed(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{source}: {e}") from None
    return _validate(data, source)


@lru_cache(maxsize=len(SHIPPED))
def _shipped_text(name: str) -> str:
    """A shipped profile's TOML (read once per process: the package does not change)."""
    return resources.files("machine.profiles").joinpath(f"{name}.toml").read_text()


@lru_cache(maxsize=32)
def _parsed(text: str) -> dict[str, Any]:
    """TOML text, parsed once per distinct text (a machine boot loads its profile six
    times; _validate only reads the result and copies the knobs it keeps)."""
    return tomllib.loads(text)


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
