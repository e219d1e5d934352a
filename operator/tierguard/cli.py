"""The single ``tierguard`` command. Each sub-command lives in its own module, imported on use.

A command module provides ``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. Errors meant for the user are raised as one of
:data:`tierguard.errors.USER_ERRORS` and printed without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import USER_ERRORS

COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("tierguard.kube.main", "run the Kubernetes operator"),
    "proxy": ("tierguard.proxy.main", "run the cascade proxy (OpenAI-compatible)"),
    "sim": ("tierguard.sim.main", "serve recorded model outcomes as an OpenAI-compatible model"),
    "workload": ("tierguard.sim.workload_main", "write the labelled synthetic support-agent workload"),
    "replay": ("tierguard.replay.main", "replay recorded outcomes through routing strategies"),
    "calibrate": ("tierguard.calibrate", "fit calibration maps and thresholds on recorded outcomes"),
    "review": ("tierguard.review.main", "the reviewer's page and the novelty reference for review sampling"),
    "tune": ("tierguard.kube.tune", "certified threshold steps from production evidence: a file, or --apply"),
    "crds": ("tierguard.kube.crdgen", "print or write the CRD manifests generated from the models"),
    "promote": ("tierguard.kube.control", "promote a policy's canary (or advance a paused step)"),
    "abort": ("tierguard.kube.control", "abort a policy's rollout (canary weight to 0)"),
    "resume": ("tierguard.kube.control", "resume an aborted or paused rollout"),
    "status": ("tierguard.kube.control", "show a policy's rollout status"),
    "demo": ("tierguard.demo.main", "a rollout and an automatic rollback, live, on this machine"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"usage: tierguard COMMAND [options]   (tierguard {__version__})", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'tierguard COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"tierguard: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        print(f"tierguard {name}: unavailable: {err}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"tierguard {name}", description=help_)
    parser.set_defaults(command=name)  # shared modules (promote/abort/...) read it in configure()
    module.configure(parser)
    ns = parser.parse_args(args[1:])
    try:
        return int(module.run(ns) or 0)
    except USER_ERRORS as err:
        print(f"tierguard {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
