"""Entry-point wrapper: any error is one line on stderr; ``--debug`` shows the traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

# Exit status of a refused setting or a failed run (argparse uses 2 for bad flags too).
ERROR_EXIT = 2


# Long library messages (a state-dict mismatch lists every key) are cut to stay readable.
MAX_CHARS = 600


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line: the usage of forty flags buries the error."""

    def error(self, message: str):
        self.exit(ERROR_EXIT, f"{self.prog}: error: {message} (see --help)\n")


def one_line(exc: BaseException) -> str:
    from .checks import UsageError, for_command_line
    from .errors import SettingError

    # The library names a setting; on the command line it is the flag that set it.
    text = for_command_line(exc) if isinstance(exc, SettingError) else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 3] + "..."
    # Errors from deep inside a library (not written for the command line) say what they are.
    expected = (UsageError, ValueError, OSError, RuntimeError, KeyError)
    return text if isinstance(exc, expected) else f"{type(exc).__name__}: {text}"


def run(main: Callable[[Optional[Sequence[str]]], int], prog: str,
        argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)``'s exit status; an exception becomes ``prog: error: ...`` and status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        return main(argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one readable line
        print(f"{prog}: error: {one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return ERROR_EXIT
