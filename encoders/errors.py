"""The error type of the encoder layer. ``pal_mm``'s errors build on it, so a caller (the CLI)
that catches :class:`EncoderError` sees every user-facing problem of both layers as one line."""


class EncoderError(Exception):
    """A problem with the user's input to an encoder (arguments, model files, images, cache)."""
