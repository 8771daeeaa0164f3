"""`python -m node` is the `ctnode` command."""

from node.cli.main import app

app()
