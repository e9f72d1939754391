"""The `farm` command line: one typer app on top of all three layers, one module per verb group.

`simulate`/`info` (farm), `train` (inference), `serve`/`query` and `evaluate`/`compare` (deploy and
inference). Library code raises typed errors (`farm.errors`); only `main` turns them into exit codes:
bad input 2, runtime failure 1, one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from deploy.cli import evaluate, serve, simulate, train
from farm.errors import FarmInputError, FarmRuntimeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="farm",
    help="bss2-farm: simulate BrainScaleS-2 AdEx neurons at scale, train amortized posteriors, serve and evaluate them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for group in (simulate, train, serve, evaluate):
    group.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console entry: usage errors become one line on stderr (exit 2), never a traceback."""
    try:
        rv = app(args=argv, prog_name="farm", standalone_mode=False)
    except typer.TyperException as e:  # click's usage errors (typer vendors click; this is its public base)
        ctx = getattr(e, "ctx", None)
        message = e.format_message()
        if ctx is not None and message == ctx.get_help():  # `farm` or `farm train` with nothing after it
            typer.echo(message, err=True)
            return 2
        typer.echo(f"Error: {message}", err=True)
        return e.exit_code
    except FarmInputError as e:
        typer.echo(f"Error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", err=True)
        return 2
    except FarmRuntimeError as e:
        typer.echo(f"Error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", err=True)
        return 1
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
