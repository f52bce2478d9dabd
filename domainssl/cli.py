"""The ``domainssl`` command line: the typer app, assembled from ``domainssl/commands/``."""

from __future__ import annotations

import typer

from domainssl.commands.common import MethodsListedCommand
from domainssl.commands.embed import embed
from domainssl.commands.infer import infer
from domainssl.commands.pretrain import pretrain
from domainssl.commands.transfer import transfer
from domainssl.commands.views import views

app = typer.Typer(
    help="Domain-adapted self-supervised learning for EO, pathology and RGB-IR re-ID.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command(cls=MethodsListedCommand)(pretrain)
app.command(cls=MethodsListedCommand)(views)
app.command()(transfer)
app.command()(embed)
app.command()(infer)
