"""Role "pdaemon": the page daemon (its scan policies arrive with the page-daemon issue)."""
