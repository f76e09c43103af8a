"""Shared foundations: the user error type, the data types, named random streams, the disk cache."""
