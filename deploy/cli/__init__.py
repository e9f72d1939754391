"""The `farm` command line: one typer app on top of all three layers, one module per verb group.

`simulate`/`info` (farm), `train` (inference), `serve`/`query` and `evaluate`/`compare` (deploy and
inference). Library code raises typed errors (`farm.errors`); only `main` turns them into exit
codes: bad input 2, runtime failure 1, one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from deploy.cli import evaluate, fingerprint, infer, serve, simulate, train
from deploy.cli.common import first_line
from deploy.cli.signals import interrupted_message, sigterm_as_interrupt
from farm.errors import FarmInputError, FarmRuntimeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="farm",
    help="bss2-farm: simulate BrainScaleS-2 AdEx neurons at scale, train amortized posteriors, "
    "serve and evaluate them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for group in (simulate, fingerprint, train, serve, evaluate, infer):
    group.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console entry: usage errors become one line on stderr (exit 2), never a traceback.

    Ctrl-C and SIGTERM stop a verb the same way (exit 130 / 143, one line saying how to resume).
    """
    with sigterm_as_interrupt() as interrupts:
        try:
            rv = _run(argv)
        except (typer.Abort, KeyboardInterrupt):  # typer returns 130 for most, raises for some
            rv = 130
        if interrupts.signum is None and rv != 130:
            return rv
        typer.echo(interrupted_message(sys.argv[1:] if argv is None else argv), err=True)
        return interrupts.exit_code()


def _run(argv: list[str] | None) -> int:
    """The app, with library errors turned into exit codes."""
    try:
        rv = app(args=argv, prog_name="farm", standalone_mode=False)
    except (
        typer.TyperException
    ) as e:  # click's usage errors (typer vendors click; this is its public base)
        message = e.format_message()
        if not message.strip():  # `farm` or `farm train` alone: typer showed the help as it raised
            return 2
        typer.echo(f"Error: {message}", err=True)
        return e.exit_code
    except FarmInputError as e:
        typer.echo(f"Error: {first_line(e)}", err=True)
        return 2
    except FarmRuntimeError as e:
        typer.echo(f"Error: {first_line(e)}", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
