"""Errors of the prediction log."""


class SpillFileError(Exception):
    """Prediction records could not be appended to a spill file (disk full, directory not writable)."""


class SpillReplayError(Exception):
    """A spill file could not be read back (it was locked, removed or unreadable)."""
