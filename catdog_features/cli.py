"""The ``catdog-features`` command line.

Each sub-command lives in :mod:`catdog_features.commands.<name>` and exposes ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import only the standard
library at top level, so ``catdog-features --help`` never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: sub-command name -> module under catdog_features.commands (order = order in --help)
COMMANDS = {
    "extract": "extract",
    "sweep": "sweep",
    "ensemble": "ensemble",
    "predict": "predict",
    "submit": "submit",
    "report": "report",
    "run": "run",
    "demo": "demo",
    "cache": "cache",
    "backbones": "backbones",
}


def _load(name):
    return importlib.import_module(f"catdog_features.commands.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    from catdog_features import __version__

    parser = argparse.ArgumentParser(
        prog="catdog-features",
        description="Image classification by transfer learning from cached frozen-backbone features: "
        "extract once, train cheap heads, search, ensemble, submit.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = _load(name)
        except ModuleNotFoundError:
            continue  # a command not written yet
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _has_nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def _quiet_tensorflow() -> None:
    """Set TensorFlow's C++ log level before it is imported (it reads it once, at import).

    On a machine without an NVIDIA driver, TF's CUDA probe logs "failed call to cuInit" at
    error level although nothing is wrong: only fatal messages are shown there. With a
    driver, errors stay visible (they matter on a GPU). A value the user set is kept.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if _has_nvidia_driver() else "3")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _quiet_tensorflow()
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted; everything committed so far is kept, run the same command to resume.", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as exc:
        if args.debug:
            raise
        text = str(exc).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        print(f"catdog-features {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
