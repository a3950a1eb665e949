"""``python -m infra.local COMMAND``: the local Prefect stack of this checkout (thin CLI over
infra.local.stack; run it from the checkout root)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from d1.errors import D1Error
from infra.local.oneshot import run_and_report
from infra.local.stack import LocalStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local", description=(
        "Local Prefect stack: a server on SQLite at 127.0.0.1 (analytics off), work pools cpu and gpu "
        "(process), the deployments of prefect.yaml, workers. State, logs and pids: <checkout>/.d1-stack/."))
    parser.add_argument("--root", default=".", help="the checkout (default: %(default)s)")
    parser.add_argument("--state-dir", help="state folder (default: <root>/.d1-stack)")
    parser.add_argument("--port", type=int, help="server port (default: 4200, or a free one)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the server, create the pools, deploy, start workers")
    up.add_argument("--workers", nargs="*", default=["cpu"], metavar="POOL", help="pools to start a worker for")
    sub.add_parser("down", help="stop every process the stack started (by pid)")
    sub.add_parser("status", help="server health and the running processes")
    sub.add_parser("deploy", help="deploy prefect.yaml again")
    run = sub.add_parser("run", help="run d1-full/<profile> and wait; print the results and where to look")
    run.add_argument("--profile", default="tiny")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="flow parameter for `prefect deployment run --param` (repeatable)")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run (default: %(default)s)")
    run.add_argument("--down", action="store_true", help="stop the stack when the run is over")
    args = parser.parse_args(argv)

    stack = LocalStack(Path(args.root), state_dir=Path(args.state_dir) if args.state_dir else None, port=args.port)
    try:
        if args.command == "up":
            stack.up(workers=args.workers)
            print(json.dumps(stack.status(), indent=2))
            print(f"UI: {stack.ui_url}")
        elif args.command == "down":
            stopped = stack.down()
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        elif args.command == "status":
            print(json.dumps(stack.status(), indent=2))
        elif args.command == "deploy":
            stack.start_server()
            stack.create_pools()
            print(stack.deploy())
        else:
            return run_and_report(args.root, args.profile, args.param, timeout=args.timeout,
                                  stop_after=args.down, stack=stack)
    except D1Error as exc:
        print(f"infra.local {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
