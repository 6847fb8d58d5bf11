"""The supervisor: RAM, state directory, role life cycle, directory, panic and shutdown."""
