"""One exception type for every user-facing error. The CLI prints its message on one line and
exits with code 2; the library raises it with a message naming file, row and field.

:class:`PalMMError` builds on the encoder layer's :class:`encoders.errors.EncoderError` (the
lower layer knows nothing of pal_mm), so catching ``PalMMError``'s base catches both."""

from encoders.errors import EncoderError


class PalMMError(EncoderError):
    """A problem with the user's input (data, model directory, arguments)."""


class DataError(PalMMError):
    """Invalid preference data: the message names file, row and column."""
