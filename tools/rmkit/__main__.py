"""`rmkit` command line: each subcommand lives in the module that does the work.

A command module exposes `register(subparsers)`, which adds its parser and sets
`func` (taking the parsed args, returning an exit status).
"""

import argparse
import importlib
import logging
import signal
import sys

from rmkit.errors import UserError

# module path of every subcommand, in the order `--help` lists them
COMMAND_MODULES = [
    "rmkit.demo",
    "rmkit.sandbox",
    "rmkit.espcli_demo",
    "rmkit.vboard.cli",
    "rmkit.flash",
    "rmkit.deploy",
    "rmkit.reset",
    "rmkit.monitor",
    "rmkit.provision.cli",
    "rmkit.pki",
    "rmkit.factory",
    "rmkit.broker",
    "rmkit.cloud.cli",
    "rmkit.benchmarks.run",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmkit",
        description="RainMaker-style user-node mapping toolkit: virtual ESP32 boards, "
        "provisioning, local broker and cloud.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug; debug may show protocol bytes)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Ctrl-C stops every command, also when started as a background job (`cmd &` in a script starts
    # it with SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"rmkit {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rmkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
