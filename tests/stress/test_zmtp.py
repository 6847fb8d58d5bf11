"""zmtp.Dealer, the green client's connection, against libzmq's own ROUTER.

A script run in a subprocess (gevent never enters this process) binds a pyzmq ROUTER on
tcp and on ipc and, through a Dealer: sends short and long (LONG-framed) requests and
gets them in order at the ROUTER; receives a reply of one frame, one of 300 KiB, and
the last frame of a multi-frame one; recv returns None within its timeout when nothing
came; and once the ROUTER's side is gone, recv says so (ConnectionError), and connect to
a dead endpoint fails (OSError); a host name is looked up. It prints one JSON line of what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, sys, time
import zmq
from machine.stress.zmtp import Dealer

out = {}
ctx = zmq.Context()
for kind, bind in (("tcp", "tcp://127.0.0.1:*"), ("ipc", "ipc://" + sys.argv[1] + "/r")):
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.bind(bind)
    d = Dealer.connect(r.getsockopt_string(zmq.LAST_ENDPOINT), timeout_s=5)
    big = bytes(range(256)) * 1200  # 300 KiB: LONG frames and many recv(2)
    d.send(b"hello", time.monotonic() + 5)
    d.send(big, time.monotonic() + 5)
    got = [r.recv_multipart() for _ in range(2)]
    ident = got[0][0]
    r.send_multipart([ident, b"one"])
    r.send_multipart([ident, big])
    r.send_multipart([ident, b"first", b"last"])
    t0 = time.monotonic()
    replies = [d.recv(5) for _ in range(3)]
    none = d.recv(0.2)
    waited = time.monotonic() - t0
    r.close()  # the role is gone
    try:
        gone = repr(d.recv(5))
    except ConnectionError:
        gone = "ConnectionError"
    out[kind] = {
        "requests": [g[1:] == [b"hello"] if i == 0 else g[1:] == [big] for i, g in enumerate(got)],
        "replies": [replies[0] == b"one", replies[1] == big, replies[2] == b"last"],
        "none": none, "waited_ok": 0.2 <= waited < 5, "gone": gone, "broken": d.broken,
    }
    d.close()
r = ctx.socket(zmq.ROUTER)
r.setsockopt(zmq.LINGER, 0)
port = r.bind_to_random_port("tcp://127.0.0.1")
d = Dealer.connect(f"tcp://localhost:{port}", timeout_s=5)  # a name, looked up
d.send(b"by name", time.monotonic() + 5)
out["by_name"] = r.recv_multipart()[1:] == [b"by name"]
d.close()
r.close()
try:
    Dealer.connect("ipc://" + sys.argv[1] + "/nobody", timeout_s=2)
    out["dead"] = "connected"
except OSError as e:
    out["dead"] = type(e).__name__
print(json.dumps(out))
"""


@pytest.mark.timeout(60)
def test_a_dealer_talks_to_libzmqs_router_over_tcp_and_ipc(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                       text=True, timeout=50, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for kind in ("tcp", "ipc"):
        seen = out[kind]
        assert seen["requests"] == [True, True], kind
        assert seen["replies"] == [True, True, True], kind
        assert seen["none"] is None, kind
        assert seen["waited_ok"], kind
        assert seen["gone"] == "ConnectionError", kind
        assert seen["broken"], kind
    assert out["by_name"]
    assert out["dead"] in ("FileNotFoundError", "ConnectionRefusedError")
