"""The ``person-search`` command."""
import argparse

__all__ = ["main"]


def build_parser():
    from . import __version__
    from .search.cli_commands import add_search_subcommands

    parser = argparse.ArgumentParser(prog="person-search", description=__doc__)
    parser.add_argument("--version", action="version", version=f"person_search {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_search_subcommands(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)
