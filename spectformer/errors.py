"""Errors about the value of a setting, raised by the library and worded without any
command-line syntax.

A ``SettingError`` names the setting the way the library spells it (a parameter or a
``TrainConfig`` field, e.g. ``num_classes``) in ``setting``, and says the value and what was
expected in ``detail``; its message is ``"<setting> <detail>"``. A command line that took the
value from a flag shows the flag instead (``spectformer.checks.for_command_line``).
"""

from __future__ import annotations


class SettingError(ValueError):
    """A value that setting ``setting`` cannot take; ``detail`` says which and why."""

    def __init__(self, setting: str, detail: str):
        super().__init__(f"{setting} {detail}")
        self.setting, self.detail = setting, detail

    def renamed(self, setting: str) -> "SettingError":
        """The same error about ``setting``: for a caller that passed its own setting on
        under another name (``reprob`` as ``RandomErasing``'s ``prob``)."""
        return type(self)(setting, self.detail)


class MissingPathError(SettingError, FileNotFoundError):
    """A setting naming a file or folder that does not exist (still a ``FileNotFoundError``)."""
