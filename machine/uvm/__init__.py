"""Role "uvm": the machine-independent VM (NetBSD's sys/uvm, concepts only)."""
