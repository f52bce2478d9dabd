"""The `domainssl` commands, one module each; ``cli.py`` assembles them into the app."""
