"""The dump file: what a crash dump, a live dump and `up --record` write, and how to read one.

A dump is one JSON object:

  kind     "crash" (a panic), "live" (ctl.dumpsys: `uvm-machine dump`, a stress run's
           corruption or frames not back) or "stop" (`up --record DIR` at a clean stop)
  reason   why it was written (the panic's words, "live", "corruption: ...")
  panic    {role, message, trace} for a crash, else null
  time     UTC, ISO 8601; profile (its name or file) and knobs (its values: a replay
           rebuilds it without the file); machine: {nframes, lease_s, incarnation, state}
  roles    {role: that role's ctl.dump state} (counters, trace tail, page tables, ...)
  flight   {role: its flight recorder's export} (machine.ipc.recorder; the supervisor's
           too), each body as {"b64": ...}

Everything but `flight` is written indented (a person reads it); `flight` is written
compact on one line (it is most of the bytes: up to record_bytes per role). read_dump()
gives the flight recorders back with their bodies as bytes.

Invariants: write_dump writes the whole file or nothing under its name (a temporary
file, created new and never through a link, renamed into place), so a reader never
sees half a dump; a dump and its copies (copy_private) are mode 0600, folders made for
them 0700: a dump holds every session's recorded bytes; read_dump accepts every
dump this project wrote, also one without `flight` (written before the recorder), and
raises DumpError (never KeyError or a JSON error) for anything else: a recorder's
entries are checked to have the recorder's shape (machine.ipc.recorder.FIELDS), so what
reads the history (machine.explore.flight) may rely on it, and what `explain` and
`replay --from-dump` read besides (the panic, the machine, uvm's held frames and address
spaces) is checked against its types (_Head, _Uvm); JSON's NaN and Infinity are refused.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Annotated, Any

import msgspec

from machine.ipc.recorder import FIELDS, KINDS, from_json, to_json

#: The placeholder the flight recorders' compact JSON replaces.
_FLIGHT_MARK = '"@@flight@@"'
DUMP_KINDS = ("crash", "live", "stop")


class DumpError(ValueError):
    """Not a dump this project can read."""


def write_dump(path: Path, doc: dict[str, Any], flight: dict[str, dict[str, Any]]) -> Path:
    """Write `doc` (kind, reason, panic, roles, ...) and the flight recorders (bodies as
    bytes) to `path` as one JSON object. => path."""
    head = json.dumps({**doc, "flight": "@@flight@@"}, indent=1, default=str)
    body = json.dumps({r: to_json(e) for r, e in flight.items()}, separators=(",", ":"))
    private_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            i = head.rindex(_FLIGHT_MARK)  # `flight` is the last key
            f.write(head[:i])
            f.write(body)
            f.write(head[i + len(_FLIGHT_MARK) :])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def private_folder(folder: Path) -> None:
    """Make `folder` (and its parents) if missing, mode 0700 when made: a dump holds every
    session's recorded bytes, as private as the files clients write (mode 0600)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def copy_private(src: str | Path, dst: str | Path) -> Path:
    """Copy a dump to `dst` (a file, or a folder to put it in) readable by its owner only
    (mode 0600). => the copy's path."""
    out = Path(dst)
    if out.is_dir():
        out = out / Path(src).name
    else:
        private_folder(out.parent)
    shutil.copyfile(src, out)
    os.chmod(out, 0o600)
    return out


U63 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Digits = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,12}$")]


class _Panic(msgspec.Struct):
    role: str = ""
    message: str = ""
    trace: list[str] = []


class _Held(msgspec.Struct):
    flags: list[str] = []
    queue: str = ""
    wire_count: U63 = 0
    loan_count: U63 = 0
    anon: U63 | None = None
    object: U63 | None = None
    offset: int = 0


class _Entry(msgspec.Struct):
    start: U63 = 0
    end: U63 = 0
    object: U63 | None = None
    anons: dict[Digits, tuple[int, int, int]] = {}


class _Space(msgspec.Struct):
    owner: U63 = 0
    entries: list[_Entry] = []


class _Uvm(msgspec.Struct):
    held: dict[Digits, _Held] = {}
    spaces: dict[Digits, _Space] = {}
    frames: dict[str, int] = {}


class _Machine(msgspec.Struct):
    nframes: Annotated[int, msgspec.Meta(ge=1, le=1 << 34)] = 16
    lease_s: Annotated[float, msgspec.Meta(ge=0, le=1e9)] = 10.0


class _Head(msgspec.Struct):
    """What `explain` and `replay --from-dump` read of a dump besides the recorders."""

    roles: dict[str, dict[str, Any]]
    kind: str = ""
    reason: str = ""
    panic: _Panic | None = None
    profile: str = ""
    knobs: dict[str, Any] = {}
    machine: _Machine | None = None


def _checked(export: dict[str, Any]) -> dict[str, Any]:
    """An export whose entries have the recorder's shape (FIELDS). => ValueError if not."""
    if not isinstance(export.get("entries"), list):
        raise ValueError("no entries")
    for e in export["entries"]:
        ok = (
            isinstance(e, list)
            and len(e) == len(FIELDS)
            and all(_u63(e[i]) for i in (0, 3, 4, 6, 7))
            and e[1] in KINDS
            and isinstance(e[2], str)
            and isinstance(e[5], int | float)
            and not isinstance(e[5], bool)
            and abs(e[5]) < 1e12
            and isinstance(e[8], dict if e[1] == "int" else bytes)
        )
        if not ok:
            raise ValueError(f"an entry is not a recorder's: {str(e)[:200]}")
    if isinstance(export.get("incarnation"), bool) or not _u63(export.get("incarnation", 0)):
        raise ValueError("its incarnation is not a number")
    return export


def _u63(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a dump holds")


def read_dump(path: str | Path) -> dict[str, Any]:
    """A dump, its flight recorders' bodies as bytes again. => DumpError if it is none."""
    try:
        doc = json.loads(Path(path).read_text(), parse_constant=_refuse_constant)
    except OSError as e:
        raise DumpError(f"{path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise DumpError(f"{path}: not JSON ({str(e)[:200]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("roles"), dict):
        raise DumpError(f"{path}: not a uvm-machine dump (no roles)")
    try:
        msgspec.convert(doc, _Head)
        msgspec.convert(doc["roles"].get("uvm") or {}, _Uvm)
    except msgspec.ValidationError as e:
        raise DumpError(f"{path}: not a uvm-machine dump: {e}") from None
    flight = doc.get("flight") or {}
    if not isinstance(flight, dict):
        raise DumpError(f"{path}: its flight recorders are not an object")
    try:
        doc["flight"] = {str(r): _checked(from_json(e)) for r, e in flight.items()}
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise DumpError(f"{path}: a flight recorder does not read: {e!r}") from None
    doc.setdefault("kind", "crash" if doc.get("panic") else "live")
    return doc
