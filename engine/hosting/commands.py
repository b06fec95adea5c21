"""The hosting subcommands of ``python -m engine`` (``health``, ``limits``, ``cleanup``) and the workspace a
command works in. :mod:`engine.cli` registers them with :func:`add_commands` and calls
:func:`enter_workspace` before running any command.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.errors import UserError

__all__ = ["add_commands", "enter_workspace"]


def enter_workspace(args) -> None:
    """A command on a run directory works in the workspace that holds it (a training job started by the
    dispatcher, whichever visitor's session started the dispatcher); others keep ``$TS_WORKSPACE``.
    Set for the whole process, so what it starts inherits it."""
    import os

    from engine.settings.audit import short_id
    from engine.workspace import WORKSPACE_ENV, workspace_of

    run_dir = getattr(args, "run_dir", None)
    if not run_dir:
        return
    wid = workspace_of(run_dir)
    if wid is None:
        os.environ.pop(WORKSPACE_ENV, None)
    else:
        os.environ[WORKSPACE_ENV] = wid
    if args.command == "run-job":  # the first line of the run's log.txt: whose job this is
        print(f"[job] run {Path(run_dir).name} started for workspace={short_id(wid)}", file=sys.stderr, flush=True)


def cmd_health(args) -> int:
    from engine.hosting.health import health_report

    report = health_report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for check in report["checks"]:
            print(f"{'ok  ' if check['ok'] else 'FAIL'} {check['check']}: {check['detail']}")
    return 0 if report["ok"] else 1


def cmd_limits(args) -> int:
    from engine.settings.limits import limit_rows
    from engine.settings.profile import profile

    rows = limit_rows()
    if args.json:
        print(json.dumps({"profile": profile(), "limits": rows}, indent=2))
        return 0
    if args.markdown:
        print("| limit | variable | default | applies | what it bounds |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r['limit']}` | `{r['variable']}` | {r['default']:g} | {r['applies']} | {r['help']} |")
        return 0
    print(f"profile: {profile()}")
    for r in rows:
        print(f"  {r['variable']:<24} {r['now']!s:<8} ({r['applies']}; default {r['default']}) {r['help']}")
    return 0


def cmd_cleanup(args) -> int:
    from engine.hosting.cleanup import remove_idle_workspaces

    if args.ttl_days is not None and args.ttl_days < 0:
        raise UserError("--ttl-days must not be negative")
    report = remove_idle_workspaces(ttl_days=args.ttl_days, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in report:
        kept = f"; kept {len(entry['kept'])} shared/active run(s)" if entry["kept"] else ""
        what = "workspace" if entry["removed"] else "files of workspace"
        print(f"{verb} {what} {entry['workspace']} (idle {entry['idle_days']} days){kept}")
    if not report:
        print("no idle workspaces")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("health", help="check the server root and workspace are writable, the job queue readable, "
                       "the limits valid (exit 1 when not)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("limits", help="the limits in force (TS_* variables or $TS_LIMITS_FILE)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="the README's table")
    p.set_defaults(func=cmd_limits)

    p = sub.add_parser("cleanup", help="hosted: remove workspaces idle longer than the TTL, with their files "
                       "(never a shared run, nor a queued or running one)")
    p.add_argument("--ttl-days", type=float, help="default: TS_WORKSPACE_TTL_DAYS")
    p.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    p.set_defaults(func=cmd_cleanup)
