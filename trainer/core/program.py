"""One way to run every trainer program (absl flags): its own flags in --help, a user's mistake
as one line with exit 2, and no half-made output folder left behind.

absl's own --help lists only flags defined in the `__main__` file and exits 1, and a bad flag
ends in "FATAL Flags parsing error" plus a usage dump; a user needs neither. A program says which
modules' flags are its own (`flag_modules`) and calls `run`:

    def main(argv): ...                 # raises UserError("--model: no model.keras in X; ...")
    def run(): program.run(main, prog="trainer.cnn.evaluate", doc=__doc__,
                           flag_modules=[__name__, "trainer.core.flags"])

Flags stay defined in the program (or in trainer.core.flags for the ones trainers share), never
in a library module, so importing a library never changes another program's flags.
"""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
from typing import Callable, Iterable, Mapping, NoReturn, Sequence

from absl import app, flags

HELP_ARGS = ("--help", "-h", "-help", "--helpshort", "-?")
# Flags that name folders a program creates: removed again when a user error stops the program
# before it finished, unless they existed before it started (a resumed run is never touched).
OUTPUT_FLAGS = ("workdir", "output")


class UserError(Exception):
    """A mistake the user can fix. The message names the flag or path and says what would fix
    it; `run` prints it as one line and exits 2."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


def help_text(prog: str, doc: str | None, flag_modules: Iterable[str],
              help_flags: Iterable[str] = ()) -> str:
    """Usage (the program's docstring, first paragraph) and one line per own flag with its
    default, then those of help_flags (flags of other modules the program reads, by name);
    --helpfull still lists absl's and every other module's flags."""
    lines = [f"usage: python -m {prog} [--flagfile=FILE] [--flag=value ...]", ""]
    if doc:
        lines += [textwrap.dedent(doc).strip().split("\n\n")[0], ""]
    seen: set[str] = set()
    lines.append("flags:")
    groups = [sorted(flags.FLAGS.get_flags_for_module(module), key=lambda f: f.name)
              for module in flag_modules]
    groups.append([flags.FLAGS[name] for name in help_flags])
    for group in groups:
        for flag in group:
            if flag.name in seen:
                continue
            seen.add(flag.name)
            default = flag.default_as_str.strip("'") if flag.default_as_str else "None"
            summary = " ".join((flag.help or "").split())
            lines.append(f"  --{flag.name}={default}  {summary}")
    lines += ["", "--helpfull lists every flag, absl's own included."]
    return "\n".join(lines)


def _exit_user_error(prog: str, message: str) -> NoReturn:
    print(f"{prog}: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(prog: str, argv: Sequence[str]) -> list[str]:
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        _exit_user_error(prog, str(e))


def _existing_outputs() -> dict[str, bool]:
    """Each output folder flag's path and whether it existed before main ran."""
    paths = [flags.FLAGS[name].value for name in OUTPUT_FLAGS if name in flags.FLAGS]
    return {path: os.path.exists(path) for path in paths if isinstance(path, str) and path}


def run(main: Callable[[list[str]], int | None], *, prog: str, doc: str | None,
        flag_modules: Sequence[str], argv: Sequence[str] | None = None,
        positional: bool = False, help_flags: Sequence[str] = ()) -> None:
    """Parses flags (a bad one: one line, exit 2), answers --help (exit 0), runs main, and turns
    a UserError into one line on stderr and exit 2, removing output folders it created.
    positional=False: every input is a flag, and a stray word is refused (a typo, not ignored).
    help_flags: flags of other modules --help lists too (those the program reads)."""
    argv = list(sys.argv if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if any(arg in HELP_ARGS for arg in argv[1:]):
        try:
            print(help_text(prog, doc, flag_modules, help_flags), flush=True)
        except BrokenPipeError:  # `--help | head`: the reader left, which is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)

    def guarded_main(args: list[str]) -> int | None:
        existed = _existing_outputs()
        try:
            if len(args) > 1 and not positional:
                fail(f"unexpected arguments {args[1:]}: every input is a --flag "
                     f"(python -m {prog} --help lists them)")
            return main(args)
        except UserError as e:
            for path, was_there in existed.items():
                if not was_there and os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
            _exit_user_error(prog, str(e))

    app.run(guarded_main, argv=argv, flags_parser=lambda args: _parse_flags(prog, args))


def rename_flags(argv: Sequence[str], renames: Mapping[str, str]) -> list[str]:
    """argv with each old flag name replaced by its new one (--old=v, --old v, -old=v), for the
    shims that keep earlier program names working. Flag files are expanded first, so a user's
    own flag file with the old names works too; one that cannot be read is left for the program
    to report."""
    args = list(argv[1:])
    try:
        args = flags.FlagValues().read_flags_from_files(args, force_gnu=True)
    except flags.Error:
        pass
    renamed = []
    for arg in args:
        dashes = "--" if arg.startswith("--") else "-" if arg.startswith("-") else ""
        name, equals, value = arg[len(dashes):].partition("=")
        if dashes and name in renames:
            arg = f"{dashes}{renames[name]}{equals}{value}"
        renamed.append(arg)
    return [argv[0], *renamed]
