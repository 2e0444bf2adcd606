"""The ``cen`` command line: one module per subcommand, gathered by :mod:`cen.cli.main`."""
