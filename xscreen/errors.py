"""User-facing error type shared by every xscreen module: the CLI prints it without a traceback."""


class XscreenError(Exception):
    """A problem with the user's input (file, flag, config, weights) that deserves a clear message.

    Subclasses name the domain (``ScanError``, ``WeightsError``, ...). The CLI catches this
    class, prints ``xscreen <command>: error: <message>`` and exits with status 2.
    """
