"""Exceptions with messages meant for the person at the keyboard."""


class SightwiseError(Exception):
    """Base class; the CLI prints the message on one line and exits 2 (user error)."""


class DataError(SightwiseError):
    """The dataset cannot be used as given (too few classes or images, bad layout)."""


class ImageDecodeError(SightwiseError):
    """One image cannot be decoded; the caller reports it by path and skips it."""


class BundleError(SightwiseError):
    """A bundle is missing, tampered with, unsafe or of an unknown schema."""
