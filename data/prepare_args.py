"""Command-line shortcuts of `prepare`, shared by `moat data prepare` and the Beam runner. A module of its own so
building the CLI parser does not import the cleaning stack (ftfy, langid: ~0.25 s)."""
from __future__ import annotations

import json


def add_source_arguments(parser) -> None:
    """--source/--out/--profile shortcuts shared by `moat data prepare` and the Beam runner's `prepare`."""
    parser.add_argument("--source", dest="sources", action="append", default=[], metavar="URI",
                        help="a file, folder, glob or dataset dir, catalog:NAME or hf:NAME (repeatable; replaces "
                             "the config's sources)")
    parser.add_argument("--out", help="output dataset dir (same as --set out=DIR)")
    parser.add_argument("--profile", choices=["short-text", "prose", "none"],
                        help="cleaning profile for all sources (same as --set clean.profile=P)")


def source_shortcuts(args) -> list[str]:
    """The shortcuts as `--set` overrides; callers place them before the user's own so an explicit --set wins."""
    shortcuts = [f"sources={json.dumps([{'uri': uri} for uri in args.sources])}"] if args.sources else []
    shortcuts += [f"out={args.out}"] if args.out else []
    shortcuts += [f"clean.profile={args.profile}"] if args.profile else []
    return shortcuts
