"""The `labgate` command and its subcommands."""
