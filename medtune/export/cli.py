"""`python -m medtune.export RUN_DIR_OR_ADAPTER --format safetensors|gguf[,...] [--quant f16|q8_0] [--out DIR]`.

    python -m medtune.export runs/2026-11-30/01-03-00_demo --format gguf                # GGUF f16, checked
    python -m medtune.export runs/<run> --format safetensors,gguf --quant q8_0 --overwrite

Exit codes: 0 written and checked; 2 bad input (path, argument, disk space, existing output), one line naming it
and the fix; 1 the export does not match the merged model (kept as <folder>.check-failed, figures in
export_check.json).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medtune.export.exporter import FORMATS, QUANTS, ExportCheckError, ExportRequest, export
from medtune.export.source import ExportInputError
from medtune.files.space import StorageError


def parse_args(argv: list[str] | None = None) -> ExportRequest:
    """The command line as an ExportRequest (values are checked by the exporter, with exit code 2)."""
    parser = argparse.ArgumentParser(prog="python -m medtune.export", description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path, help="a run directory (with adapter/) or an adapter directory")
    parser.add_argument("--format", default="gguf", help=f"comma-separated: {', '.join(FORMATS)} (default gguf)")
    parser.add_argument("--quant", default="f16", help=f"GGUF weight type: {', '.join(QUANTS)} (default f16)")
    parser.add_argument("--out", type=Path, default=None, help="output root (default <run dir>/export)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    parser.add_argument("--base", default=None, help="base model directory, when the recorded one is elsewhere")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the check (not recommended)")
    parser.add_argument(
        "--base-mismatch-ok",
        action="store_true",
        help="merge even when the base is not the one the adapter records (base_identity.json)",
    )
    args = parser.parse_args(argv)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    return ExportRequest(
        args.path, formats, args.quant, args.out, args.overwrite, args.base, args.check, args.base_mismatch_ok
    )


def main(argv: list[str] | None = None) -> int:
    """Run the export; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    request = parse_args(argv)
    try:
        written = export(request)
    except ExportInputError as err:
        logging.getLogger("medtune.export").error("%s", err)
        return 2
    except (ExportCheckError, StorageError) as err:  # a check that failed, a disk that filled while writing
        logging.getLogger("medtune.export").error("%s", err)
        return 1
    for fmt, folder in written.items():
        print(f"{fmt}: {folder}")
    return 0
