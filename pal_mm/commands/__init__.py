"""One module per ``pal-mm`` subcommand (see pal_mm/cli.py)."""
