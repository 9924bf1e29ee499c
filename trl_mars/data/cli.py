"""``trl-mars data``: fetch the data sets the package cannot ship, and show where each one is read from."""

from __future__ import annotations

import argparse

from trl_mars.argtypes import HelpFormatter, positive_float
from trl_mars.data.movielens_download import MOVIELENS_SHA256, MOVIELENS_URL, download_movielens, movielens_cache_dir

DATASETS = ("movielens",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-mars data", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    get = sub.add_parser(
        "download",
        help="download a data set into the user's cache (checksum-verified)",
        formatter_class=HelpFormatter,
    )
    get.add_argument("dataset", choices=DATASETS, help="the data set to fetch (MovieLens ml-latest-small)")
    get.add_argument("--dest", help=f"folder for the CSV files (default: {movielens_cache_dir()})")
    get.add_argument("--url", default=MOVIELENS_URL, help="the zip to fetch (https://, http:// or file://)")
    get.add_argument(
        "--sha256", default=MOVIELENS_SHA256, help="expected sha256 of the zip; 'none' skips every checksum"
    )
    get.add_argument("--force", action="store_true", help="download again even if a copy exists")
    get.add_argument("--timeout", type=positive_float, default=60.0, help="network timeout in seconds")
    sub.add_parser("where", help="print where each data set is read from")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "where":
        from trl_mars.data.locations import cache_dir, data_root
        from trl_mars.data.movielens_download import find_movielens
        from trl_mars.eval.datasets import humaneval_source

        try:
            movielens = str(find_movielens())
        except FileNotFoundError as err:
            movielens = f"missing ({err})"
        print(f"TRL_MARS_DATA: {data_root() or '(unset)'}\ncache: {cache_dir()}")
        print(f"humaneval: {humaneval_source()}\nmovielens: {movielens}")
        return 0
    checks = {"sha256": None, "file_sha256": None} if args.sha256.lower() == "none" else {"sha256": args.sha256}
    try:
        folder = download_movielens(args.dest, url=args.url, force=args.force, timeout=args.timeout, **checks)
    except (ValueError, OSError) as err:  # checksum, not a zip, no network (URLError), no disk space
        raise SystemExit(f"trl-mars data download: error: {err}") from None
    print(f"MovieLens ml-latest-small in {folder}")
    return 0
