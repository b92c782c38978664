"""Subcommands of the ``inferos`` command, one module each."""
