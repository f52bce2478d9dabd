"""``python -m domainssl`` runs the CLI."""

from domainssl.cli import app

if __name__ == "__main__":  # spawned worker processes import this module again
    app()
