class LongtailError(Exception):
    """An error caused by bad input or configuration; the CLI prints it without a traceback.

    The message names the file or parameter and says what to do.
    """
