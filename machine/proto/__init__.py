"""THE protocol, defined once: every message of uvm-machine.

Import messages from here; docs/protocol.md is generated from these classes
(machine.proto.gendoc) and a test fails when it is stale.

One module per area (control, mmu's pmap, the trap path, uvm, pdaemon, net), each re-exported
whole below; machine.proto.codec imports the same modules to register their
messages. A new area is a new module and one line here and in codec.py.
"""

from machine.proto.base import *  # noqa: F403
from machine.proto.codec import *  # noqa: F403
from machine.proto.control import *  # noqa: F403
from machine.proto.net import *  # noqa: F403
from machine.proto.pdaemon import *  # noqa: F403
from machine.proto.pmap import *  # noqa: F403
from machine.proto.trap import *  # noqa: F403
from machine.proto.uvm import *  # noqa: F403
from machine.proto.vmcalls import *  # noqa: F403
