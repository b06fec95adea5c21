"""``python -m tests.load [--sessions 8] [--image-size 32] [--keep] [--json]`` (``make bench-load``): the hosted
app under N browser sessions while a fine-tune trains: page time vs a trivial app, peak RSS, queue fairness,
isolation. Exit status 1 when a check failed."""
import argparse
import json
import sys

from tests.load.harness import format_report, load_test

parser = argparse.ArgumentParser(prog="python -m tests.load", description=__doc__)
parser.add_argument("--sessions", type=int, default=8)
parser.add_argument("--image-size", type=int, default=32, help="the sessions' linear-probe image size")
parser.add_argument("--keep", action="store_true", help="keep the temporary home and the server logs")
parser.add_argument("--json", action="store_true")
args = parser.parse_args()
report = load_test(args.sessions, probe_image_size=args.image_size, keep=args.keep,
                   progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
raise SystemExit(0 if report["passed"] else 1)
