"""The ``ecoserve`` command line.

Each subcommand imports its machinery lazily, so ``ecoserve --help`` stays fast
and commands that need no engine never import vLLM or torch.
"""

from __future__ import annotations

import click

from ecoserve import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ecoserve")
def main() -> None:
    """EcoServe: partially disaggregated LLM serving on stock vLLM engines."""


@main.command("make-model")
@click.argument("path", type=click.Path(file_okay=False, writable=True))
@click.option(
    "--size",
    type=click.Choice(["tiny", "small"]),
    default="tiny",
    show_default=True,
    help="tiny: a few MB, starts in seconds (tests). small: a few hundred million "
    "parameters, so prefill costs real compute on CPU (benchmarks).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weights and tokenizer are a pure function of the seed.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it already holds a model.")
def make_model_cmd(path: str, size: str, seed: int, force: bool) -> None:
    """Write a random-weight Llama-style model and a locally trained tokenizer
    to PATH. vLLM (CPU build) loads it with no network access."""
    from ecoserve.models import make_model

    try:
        out = make_model(path, size=size, seed=seed, force=force)
    except ValueError as e:  # e.g. PATH holds something and --force was not given
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {size} model to {out}")


def _register_subcommands() -> None:
    from ecoserve.cli.bench import bench
    from ecoserve.cli.profile import profile
    from ecoserve.cli.serve import serve
    from ecoserve.cli.simulate import simulate

    main.add_command(serve)
    main.add_command(simulate)
    main.add_command(bench)
    main.add_command(profile)


_register_subcommands()

if __name__ == "__main__":
    main()
