"""Role "net": the mbuf network driver (sockets and loans arrive with the zero-copy issue)."""
