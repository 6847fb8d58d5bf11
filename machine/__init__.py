"""uvm-machine: NetBSD UVM's kernel VM parts as processes over ZeroMQ, sharing one RAM segment."""

__version__ = "0.1.0"
