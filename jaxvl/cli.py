"""The ``jaxvl`` command, built from ONE table of commands (``COMMANDS``): ``jaxvl --help`` lists them,
``jaxvl COMMAND --help`` describes one (examples, its config's variants and required keys, overrides).

Each ``Command`` row holds the command's name (``caption train``, ``bench models``: a group and a verb),
a one-line summary, a description paragraph, examples, the packaged config it reads (whose ``ARGUMENT``,
``VARIANTS`` and ``REQUIRED`` its ``--help`` lists), a function adding its own arguments and its handler,
``handler(args) -> exit status``. Only the command being run has its arguments built, so a benchmark module
is imported only by ``jaxvl bench NAME``.

Exit statuses: 0 done; 1 training diverged (or ``jaxvl models`` found a parameter count unlike VOLTA's);
2 a user error, printed as one line ``jaxvl: error: ...`` naming the key, file or record, without a
traceback (``--debug``, anywhere on the line, or ``JAXVL_DEBUG=1`` re-raises it); 130 Ctrl-C (in training:
``stopped at step N; last checkpoint: step M in DIR; rerun the same command to resume``); 143 SIGTERM,
after a checkpoint.

This module builds the parser from the table and runs the command; the table and the argument builders are in
``jaxvl.cli_commands``, the handlers in ``jaxvl.cli_handlers``, ``Command``, ``UsageError`` and one command's
parser and ``--help`` in ``jaxvl.cli_parser``.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxvl.cli_commands import COMMANDS, GROUPS
from jaxvl.cli_parser import DEBUG_HELP, VERBOSE_HELP, Command, Parser, UsageError, build_command, help_rows

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# Exceptions that are the user's to fix: a bad config key or value, a missing path, malformed data, a refused
# checkpoint. Matched by class name among jaxvl's own classes (so this module imports none of them); besides
# these, the OS errors below and any ValueError raised by jaxvl's own code (config and data validation).
USER_ERRORS = ("UsageError", "ConfigError", "SourceError", "BadRecord", "UnsafeData", "BatchError", "StateDictError",
               "VocabMismatch", "MetricUnavailable")
OS_USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


# --------------------------------------------------------------------------------------------- the parser

def _listing(prefix: str = "") -> str:
    """The ``commands:`` rows, of the commands whose name starts with ``prefix``."""
    return "commands:\n" + "\n".join(help_rows({c.name: c.summary for c in COMMANDS if c.name.startswith(prefix)}))


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The ``jaxvl`` parser from ``COMMANDS``: every command's arguments, or only ``selected``'s (the others are
    bare stubs that still route and list)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = Parser(prog="jaxvl", formatter_class=raw, epilog=_listing() +
                    "\n\n`jaxvl COMMAND --help` gives its description, examples, config variants and required keys."
                    "\nA user error prints one line `jaxvl: error: ...` and exits 2; --debug or JAXVL_DEBUG=1 "
                    "shows the traceback.",
                    description="Controlled vision-and-language transformer experiments in JAX.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    top = parser.add_subparsers(dest="jaxvl_name", metavar="COMMAND", required=True, help="one of those below")
    groups: dict[str, argparse._SubParsersAction] = {}
    for spec in COMMANDS:
        group, _, verb = spec.name.rpartition(" ")
        if group and group not in groups:
            g = top.add_parser(group, formatter_class=raw, description=GROUPS[group], epilog=_listing(group + " "))
            groups[group] = g.add_subparsers(dest=f"jaxvl_{group}", metavar="COMMAND", required=True,
                                             help="one of those below")
        sub = (groups[group] if group else top).add_parser(verb)
        sub.set_defaults(jaxvl_command=spec)
        if selected is None or selected == spec.name:
            build_command(sub, spec)
    return parser


def _selected(argv: list[str]) -> str:
    """The command ``argv`` names (its first one or two words), or ``""``."""
    words = [a for a in argv if not a.startswith("-")][:2]
    names = {c.name for c in COMMANDS}
    return next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in names), "")


# ----------------------------------------------------------------------------------------------------- main

def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is the user's to fix (``USER_ERRORS``): printed as one line, exit 2."""
    if isinstance(e, OS_USER_ERRORS) or any(c.__module__.startswith("jaxvl") and c.__name__ in USER_ERRORS
                                            for c in type(e).__mro__):
        return True
    tb = e.__traceback__  # a ValueError raised by jaxvl's own code (the innermost frame is in the package)
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return isinstance(e, ValueError) and tb is not None and tb.tb_frame.f_code.co_filename.startswith(PACKAGE_DIR)


def _run(argv: list[str]) -> int:
    overrides = [a.removeprefix("--config.") for a in argv if a.startswith("--config.")]
    argv = [a for a in argv if not a.startswith("--config.")]
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--config.{item}: expected --config.KEY=VALUE (one argument, with '=')")
    try:
        args, unknown = build_parser(_selected(argv)).parse_known_args(argv)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    spec: Command = args.jaxvl_command
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (see `jaxvl {spec.name} --help`)")
    if overrides and not getattr(args, "config", None):
        needs = "--config NAME[:ARG]" if spec.config else f"a config, and `jaxvl {spec.name}` takes none"
        raise UsageError(f"--config.{overrides[0]}: --config.KEY=VALUE overrides need {needs}")
    args.config_overrides = overrides
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS's "Using custom data configuration" per dataset open
    return spec.handler(args)


def main(argv: list[str] | None = None) -> int:
    """Runs ``jaxvl ARGV``; returns the exit status (module doc)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("JAXVL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if "--verbose" in argv:
        os.environ["JAXVL_VERBOSE"] = "1"  # read where reports are printed (runtime.stage)
        argv = [a for a in argv if a != "--verbose"]
    try:
        return _run(argv)
    except (KeyboardInterrupt, Exception) as e:
        loop = sys.modules.get("jaxvl.runtime.loop")  # imported if training ran: its exceptions exist only then
        interrupted, diverged = getattr(loop, "TrainingInterrupted", ()), getattr(loop, "TrainingDiverged", ())
        if debug or not (isinstance(e, (KeyboardInterrupt, diverged)) or is_user_error(e)):
            raise
        if isinstance(e, KeyboardInterrupt):
            print(str(e) if isinstance(e, interrupted) else "jaxvl: interrupted", file=sys.stderr)
            return 130  # 128 + SIGINT
        message = " ".join(line.strip() for line in (str(e) or type(e).__name__).splitlines() if line.strip())
        print(f"jaxvl: error: {message}", file=sys.stderr)
        return 1 if isinstance(e, diverged) else 2


if __name__ == "__main__":
    sys.exit(main())
