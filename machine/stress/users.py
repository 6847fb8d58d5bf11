"""The stress users, by name, for `--mix name=weight,...`.

  pattern  stores and loads across many pages of one process
  forker   a fork tree: private memory stays copy-on-write, shared anonymous
           memory and a shared file mapping see everyone's writes
  hog      more memory than RAM, swept with page signatures (the page daemon)
  sender   sends of 1 B .. 1 MiB, loaned or copied, then overwrite / fork /
           munmap / exit; every payload checked on the session's wire
  files    shared and private file mappings, msync, the host file checked
  churn    a second session: attach, spawn, map, touch, exit, detach

Each is a MachineUser (base.py) with `weight` 1 by default; each checks every
byte it reads against its own models (model.py) and raises
outcome.Corruption on a wrong one. The classes live in users_memory.py
(pattern, forker, hog) and users_io.py (sender, files, churn); what they
share (the scenario task, reset after a failure, unique file names) in
users_common.py. Invariant: USERS names every user class, and each class's
operations are named "<name>.<step>" with <name> its key here.
"""

from __future__ import annotations

from machine.stress.users_common import VerifyingUser
from machine.stress.users_io import ChurnUser, FilesUser, SenderUser
from machine.stress.users_memory import ForkerUser, HogUser, PatternUser

USERS: dict[str, type[VerifyingUser]] = {
    "pattern": PatternUser,
    "forker": ForkerUser,
    "hog": HogUser,
    "sender": SenderUser,
    "files": FilesUser,
    "churn": ChurnUser,
}

__all__ = [
    "USERS",
    "ChurnUser",
    "FilesUser",
    "ForkerUser",
    "HogUser",
    "PatternUser",
    "SenderUser",
]
