"""`python -m medtune.search search=<name> [search.key=value ...] [medtune.train overrides ...] [--config-dir DIR]`.

    python -m medtune.search search=ratio_ja
    python -m medtune.search search=ratio_ja search.seeds=[0,1,2] search.margin=0.1 model=tiny_llama
    python -m medtune.search --config-dir my_config search=my_search      # my_config/search/my_search.yaml

`search=` and `search.` overrides compose the search (medtune/conf/search/); every other argument is a
medtune.train override of every proxy run, after the search file's `train` list. Exit status: 0 (search.md
written, with a recommendation or "no safe share"), 2 for a config that cannot run, 1 when too few runs finished.
"""

from __future__ import annotations

import logging
import sys

from medtune.config import ConfigError, take_config_dir
from medtune.config.search import compose_search, split_overrides


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the search; one line on stderr for a bad config."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from medtune.search.run import SearchError, search

    try:
        mine, rest = split_overrides(take_config_dir(args))
        scfg = compose_search(mine)
        name = next(o.partition("=")[2] for o in mine if o.startswith("+search="))
        result = search(scfg, rest, name)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.files[0].read_text(encoding="utf-8"))
    return 0
