"""The argparse side of the ``jaxvl`` command: the ``Command`` row of its table (``jaxvl.cli_commands``), the
``UsageError`` a bad command line raises, the ``Parser`` that raises it, and one command's parser with its
``--help`` (``build_command``: description, examples, the config's variants, required keys and overrides).
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from collections.abc import Callable
from typing import NoReturn

WRAP = dict(width=110, break_on_hyphens=False, break_long_words=False)  # help text
DEBUG_HELP = "show the traceback of an error (or JAXVL_DEBUG=1)"
VERBOSE_HELP = "longer start-up reports, e.g. the compiled step's full memory block (or JAXVL_VERBOSE=1)"
OVERRIDES = ("overrides: --config.KEY=VALUE sets any key of the config, dotted for nested keys{nested}; "
             "VALUE is a Python literal, else a string. An unknown key or a value of another type is an error. "
             "Keys: {keys}.")


def workdir_path(text: str) -> str:
    """``--workdir``: a local or mounted path. A URL (``gs://...``) is refused: the runs write with ``open`` and
    ``os`` paths, which would turn ``gs://b/run`` into a local ``gs:/b/run`` (docs/launch.md: mount the bucket)."""
    if "://" in text:
        raise argparse.ArgumentTypeError(f"{text}: a workdir must be a local or mounted path, not a URL; mount the "
                                         "bucket (gcsfuse, docs/launch.md) and give a path under the mount")
    return text


class UsageError(Exception):
    """A command line that cannot be run (argparse's complaints, overrides without ``--config``)."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One row of the command table (``jaxvl.cli``'s module doc)."""

    name: str
    summary: str
    description: str
    examples: tuple[str, ...]
    handler: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    config: str | None = None  # packaged config: --config NAME[:ARG], its variants and required keys in --help
    config_required: bool = True


class Parser(argparse.ArgumentParser):
    """argparse whose complaints are ``UsageError``s: one line, exit 2, like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def help_rows(items: dict[str, str], indent: int = 2) -> list[str]:
    """``name  text`` rows, the texts aligned and wrapped."""
    width = max((len(k) for k in items), default=0)
    pad = " " * (indent + width + 2)
    return [textwrap.fill(text, **WRAP, initial_indent=f"{' ' * indent}{key:<{width}}  ", subsequent_indent=pad)
            for key, text in items.items()]


def _config_help(spec: Command) -> list[str]:
    """The config part of a command's ``--help``: the argument, variants, required keys, the override syntax."""
    from jaxvl.configs import config_module

    module = config_module(spec.config)
    required = module.REQUIRED
    keys = ", ".join(f"{k}.*" if hasattr(v, "keys") else k for k, v in module.get_config(None).items())
    nested = next((f" (--config.{k}=...)" for k in required if "." in k), "")
    where = (f"config: --config {spec.config}[:ARG] (jaxvl/configs/{spec.config}.py), or a file of your own: --config "
             f"PATH.py[:ARG]" + ("" if spec.config_required else "; it replaces the flags"))
    return ["", textwrap.fill(where, **WRAP), f"variants, ARG = {module.ARGUMENT}:", *help_rows(module.VARIANTS),
            "required keys:" + ("" if required else " none"), *help_rows(required),
            textwrap.fill(OVERRIDES.format(nested=nested, keys=keys), **WRAP)]


def build_command(p: argparse.ArgumentParser, spec: Command) -> None:
    """The full parser of one command: its arguments, ``--config``, description and epilog."""
    if spec.arguments is not None:
        spec.arguments(p)
    if spec.config:
        p.add_argument("--config", required=spec.config_required, default=None, metavar="NAME[:ARG]",
                       help=f"the config: {spec.config}[:ARG] (packaged) or PATH.py[:ARG]; variants below")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = textwrap.fill(spec.description, **WRAP)
    epilog = ["examples:", *(textwrap.fill(e, **WRAP, initial_indent="  ", subsequent_indent="      ")
                             for e in spec.examples)]
    if spec.config:
        epilog += _config_help(spec)
    p.epilog = "\n".join(epilog) + (f"\n\n{p.epilog}" if p.epilog else "")

