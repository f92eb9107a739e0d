"""The typed errors of the protocol package: one per kind of bad input."""


class SegmentNameError(ValueError):
    """A path or file name that is not a valid segment or tombstone name."""


class ProtocolError(ValueError):
    """Bytes from a peer that are malformed, oversized or of the wrong shape."""


class ConfigError(ValueError):
    """A setting (flag, config key, node file, secret file) that cannot be used."""


class FileNameError(ValueError):
    """A chat batch name or an extras path that must not be replicated: malformed,
    or hostile (`..`, absolute, backslash, NUL, outside its directory)."""
