"""Ready-made test clients: programs that act as user processes against any machine."""
