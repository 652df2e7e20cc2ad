"""The ``mlxperf`` command: ``mlxperf synth`` builds synthetic models, ``mlxperf machine`` shows
the fingerprint that baselines are keyed on."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pytest_mlxperf import __version__, machine


def _machine(args: argparse.Namespace) -> int:
    fp = machine.fingerprint(args.name)
    print(json.dumps({"machine_id": machine.machine_id(fp), "fingerprint": fp}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pytest_mlxperf import synth

    parser = argparse.ArgumentParser(prog="mlxperf", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    synth.add_parser(sub)
    show = sub.add_parser("machine", help="print this machine's fingerprint and baseline id")
    show.add_argument("--name", help="the --mlxperf-machine override to apply")
    show.set_defaults(func=_machine)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
