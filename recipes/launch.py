"""The one launcher behind every recipe shell script.

    python recipes/launch.py RECIPE COMMAND [ARGS...]

RECIPE is a module of ``recipes/fwp_recipes`` (``wikitext103``, ``wmt14``, ``synthetic``,
``demo``) whose ``COMMANDS`` maps COMMAND (``prepare``, ``train``, ``evaluate``, ``smoke``; the
synthetic task's settings ``capacity``, ``update_rules``; the demo's ``run``) to a function of
the remaining arguments. All of them run fairseq through ``fwp_recipes.common``. All of them run fairseq through ``fwp_recipes.common``. A :class:`fwp_recipes.common.RecipeError` ends the run with ``error: <message>``
and exit code 2, without a traceback.
"""

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fwp_recipes.common import RecipeError  # noqa: E402

RECIPES = ("wikitext103", "wmt14", "synthetic", "demo")


def main(argv) -> int:
    if len(argv) < 2 or argv[0] not in RECIPES:
        print(f"usage: launch.py RECIPE COMMAND [ARGS]; RECIPE one of: {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"fwp_recipes.{argv[0]}")
    commands = module.COMMANDS
    if argv[1] not in commands:
        print(f"error: unknown command {argv[1]!r} for {argv[0]}; valid: {', '.join(commands)}", file=sys.stderr)
        return 2
    try:
        return int(commands[argv[1]](list(argv[2:])) or 0)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
