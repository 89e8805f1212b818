"""The clearmark command's subcommands, one module per group."""
