"""furnace-modules: the guest's loaded kernel modules, read from outside the
guest through the app's VMI socket, as the kernel's module list holds them.

Prints NAME, BASE and SIZE per module (as ``furnace vmi modules``), or a JSON
array with ``--json``. Exit status 1 and the typed error on stderr when the
sidecar refuses or the guest is gone.
"""

import argparse
import json
import sys

from furnace_vmi import DEFAULT_SOCKET, Vmi, VmiError, to_dict


def table(modules):
    lines = ["%-24s %18s %10s" % ("NAME", "BASE", "SIZE")]
    for m in modules:
        lines.append("%-24s %#18x %10d" % (m.name, m.base, m.size))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="furnace-modules", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="the app's VMI socket (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    args = parser.parse_args(argv)
    try:
        with Vmi(args.socket) as vmi:
            modules = vmi.modules()
    except VmiError as e:
        print("furnace-modules: %s: %s" % (args.socket, e), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([to_dict(m) for m in modules], indent=2))
    else:
        print(table(modules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
