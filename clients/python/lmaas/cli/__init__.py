"""The ``lmaas`` command line. Every option also reads an ``LMAAS_*`` variable."""

from __future__ import annotations

import click

from lmaas import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="lmaas")
def main() -> None:
    """LMaaS: serve ONNX Runtime and PyTorch models over the Open Inference Protocol v2."""


def _register() -> None:
    from lmaas.cli import control, control_plane, up, worker

    main.add_command(worker.worker)
    main.add_command(control_plane.control_plane)
    main.add_command(control.model)
    main.add_command(control.deploy)
    main.add_command(control.rollback)
    main.add_command(control.status)
    main.add_command(control.token)
    main.add_command(up.up)
    from lmaas.cli import llm  # generate, chat

    main.add_command(llm.generate)
    main.add_command(llm.chat)


_register()
