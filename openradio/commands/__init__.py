"""One module per ``openradio`` subcommand (``HELP``, ``EXAMPLES``, ``add_arguments``, ``run``).

Why command modules import inside ``run()``: ``openradio --help`` (and every command's argument
parsing) imports all of them to build the parser, so each imports at its top only the light
pieces (stdlib, ``openradio.commands.common``) and takes torch, the model stack and optional
extras inside ``run()`` and the helpers it calls, where the command needs them. That one reason
covers every function-level import in ``openradio/cli.py`` and ``openradio/commands/``.
"""
