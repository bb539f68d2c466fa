"""The subcommands of ``nca``; each module has ``main(argv)`` and is imported on demand."""
