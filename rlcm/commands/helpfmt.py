"""argparse help that shows each option's default (when it has a real one)."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the default is None/False or the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        no_default = default is None or default is False or default is argparse.SUPPRESS or default == []
        if action.option_strings and not no_default and "default" not in text:
            text += " (default: %(default)s)"
        return text
