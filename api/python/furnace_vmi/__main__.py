"""``python3 -m furnace_vmi ps [--socket PATH] [--json]``: the guest's process
list through the sidecar, in the table or JSON shape of ``furnace vmi ps``."""

import argparse
import json
import sys

from . import DEFAULT_SOCKET, Vmi, VmiError, to_dict


def _ps(args):
    with Vmi(args.socket, timeout=args.timeout) as vmi:
        processes = vmi.processes()
    if args.json:
        print(json.dumps([to_dict(p) for p in processes], indent=2))
        return
    lines = ["%7s %7s %6s %-16s %18s %12s" % ("PID", "PPID", "UID", "NAME", "TASK", "DTB")]
    for p in processes:
        lines.append("%7d %7d %6d %-16s %#18x %#12x" % (p.pid, p.ppid, p.uid, p.name, p.task, p.dtb))
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m furnace_vmi", description="Furnace VMI client")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    ps = commands.add_parser("ps", help="the guest's process list")
    ps.add_argument("--socket", default=DEFAULT_SOCKET, help="the app's sidecar socket (default: %(default)s)")
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the sidecar")
    ps.set_defaults(run=_ps)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except VmiError as e:
        print("furnace_vmi: %s" % e, file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
