"""The `shoal` command: `serve`, and client commands that talk to a server over HTTP."""

from __future__ import annotations

import argparse
import sys

from shoal import settings as settings_mod


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a Shoal node",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="settings (flag, env SHOAL_<NAME>, or TOML key):\n" + "\n".join(
                           f"  {s.name:<20} {s.help} (default: {s.default})"
                           for s in settings_mod.SETTINGS))
    p.add_argument("--config", help="TOML settings file (env SHOAL_CONFIG)")
    for s in settings_mod.SETTINGS:
        if s.secret:
            continue
        flag = "--" + s.name.replace("_", "-")
        p.add_argument(flag, dest=s.name, default=None, help=s.help)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from shoal.server.main import serve

    overrides = {s.name: getattr(args, s.name, None) for s in settings_mod.SETTINGS}
    try:
        resolved = settings_mod.load(args.config, overrides)
    except settings_mod.SettingsError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 2
    serve(resolved)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
