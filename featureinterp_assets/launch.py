"""The ``featureinterp`` console script: caps malloc arenas before Python imports anything heavy.

glibc reads ``MALLOC_ARENA_MAX`` only at process start, so the script re-executes itself once with
the variable set (featureinterp/llm/memory.py says why and what it saves), then hands over to
:func:`featureinterp_assets.cli.main`. Importing this module does nothing; only :func:`main` execs.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from featureinterp.llm.memory import arena_environment

    env = arena_environment(dict(os.environ), sys.platform)
    if env is not None:
        os.execve(sys.executable, [sys.executable, "-m", "featureinterp_assets.cli", *sys.argv[1:]], env)
    from featureinterp_assets.cli import main as cli_main

    cli_main()
