"""CLI subcommands, one module each.

Each module has ``register(sub)``: it adds its parser(s) to the argparse sub-parsers and sets
``func`` (``(args) -> int`` exit code) as the parser default. ``vnet.cli`` lists the modules.
Global options are on ``args``: ``config_dir``, ``state_dir``, ``run_dir``, ``policy_dir``
(all ``pathlib.Path``) and ``json`` where a command offers ``--json``.
"""
