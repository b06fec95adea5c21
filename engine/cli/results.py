"""``evaluate`` and ``export``: a trained run's evaluation (stored once) and its ONNX variants with the parity gate."""
from __future__ import annotations

import sys
from pathlib import Path

from engine.cli.common import print_json

__all__ = ["add_commands", "cmd_evaluate", "cmd_export"]


def _format_evaluation(s: dict) -> str:
    h = s["headline"]
    lines = [f"run {s['run']}: {s['images']} validation images, {len(s['classes'])} classes"]
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        lines.append(f"  {name:<18} {h[name]['value']:.4f}  95% CI [{h[name]['low']:.4f}, {h[name]['high']:.4f}]")
    c = s["calibration"]
    ece = f"ECE {c['ece_before']:.4f}" + (f" -> {c['ece_after']:.4f}" if c.get("fitted") else "")
    lines.append(f"  temperature {c['temperature']:.4g} ({'fitted' if c.get('fitted') else c.get('reason')}); {ece}")
    o = s["ood"]
    lines.append(f"  OOD: {o['method']}; flag above {o['threshold']:.4f} (p{o['flag_percentile']} of validation); "
                 f"validation flagged {100 * o['val_flagged_rate']:.1f}%")
    lines.append(f"  overfitting: {s['overfitting']['reading']}")
    lines.append(f"  {'class':<20}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}")
    for r in s["per_class"]:
        lines.append(f"  {r['class']:<20}{r['precision']:>10.3f}{r['recall']:>8.3f}{r['f1']:>8.3f}{r['support']:>9}")
    lines.append(f"  confusion matrix (rows: true, columns: predicted): {s['confusion']['counts']}")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from engine.runs import Run

    run = Run(args.run_dir)
    run.config()  # not a run directory: one clear line, before torch is imported
    from engine.evaluation import evaluate_run, load_evaluation

    stored = None if args.recompute else load_evaluation(run.path)
    if stored is not None and not stored.stale:
        summary = stored.summary
    else:
        say = None if args.quiet else (lambda m: print(f"[evaluate] {m}", file=sys.stderr, flush=True))
        summary = evaluate_run(run.path, progress=say, n_resamples=args.resamples)
    if args.json:
        print_json(summary)
    elif not args.quiet:
        print(_format_evaluation(summary))
    return 0


def cmd_export(args) -> int:
    from engine.export import VARIANTS, ExportParityError, export_run, parity_rows

    variants = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        parity = export_run(args.run_dir, variants=variants, max_parity_images=args.max_images,
                            progress=lambda m: print(f"[export] {m}", file=sys.stderr, flush=True))
    except ExportParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"top-1 agreement {parity['top1_agreement']:.4f} on {parity['images']} validation images; "
          f"max |logit diff| {parity['max_abs_logit_diff']:.2e}")
    for r in parity_rows(parity):
        diff, delta = (float("nan") if x is None else x for x in (r["max |logit diff|"], r["Δ accuracy (points)"]))
        print(f"  {r['variant']:<13} {r['file']:<20} {r['MB']:6.2f} MB  agreement {r['top-1 agreement %']:.2f}%  "
              f"max|diff| {diff:.2e}  accuracy {r['accuracy %']:.2f}% ({delta:+.2f} pts)  "
              f"flipped {r['images flipped']}  [{r['result']}]")
    if args.bundle:
        from engine.export.bundle import build_bundle

        print(f"wrote {build_bundle(args.run_dir)}")
    print(f"wrote {Path(args.run_dir) / 'export' / 'model.onnx'}")
    return 0


def add_commands(sub) -> None:
    """Register ``export``, ``evaluate`` on ``sub``."""
    p = sub.add_parser("export", help="export a run to ONNX and check parity")
    p.add_argument("run_dir")
    p.add_argument("--variants", default="fp32",
                   help="comma-separated: fp32,fp32-uint8in,fp16,int8, or 'all' (fp32 is always exported)")
    p.add_argument("--max-images", type=int, help="check parity on at most this many validation images")
    p.add_argument("--bundle", action="store_true", help="also write export/bundle.zip")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="evaluate a run (metrics with CIs, calibration, OOD reference); stored once")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--recompute", action="store_true", help="evaluate again even if an up-to-date evaluation exists")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the confidence intervals")
    p.add_argument("--quiet", action="store_true", help="print nothing (the background task)")
    p.set_defaults(func=cmd_evaluate)
