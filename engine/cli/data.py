"""``inspect``, ``predict``, ``backbones``, ``add-weights`` and ``setup``: data, models and weights."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.errors import UserError
from engine.cli.common import print_json

__all__ = ["add_commands", "cmd_inspect", "cmd_predict", "cmd_backbones", "cmd_add_weights", "cmd_setup"]


def cmd_inspect(args) -> int:
    from engine.data.health import health_check

    dataset, health = health_check(args.data, val_fraction=args.val_fraction)
    summary = dataset.summary()
    if args.embedding:
        from engine.features.embedding import embedding_map

        points = embedding_map(dataset, max_images=args.embedding_max, method=args.embedding_method)
        health["embedding"] = {"points": int(len(points)), "suspect": int(points["suspect"].sum()),
                               "suspects": points.loc[points["suspect"], ["path", "label", "neighbour_agreement"]]
                               .head(50).to_dict("records")}
    if args.json:
        print_json({**summary, "health": health})
        return 0
    print(f"dataset {summary['name']}: {summary['num_images']} images, {len(summary['classes'])} classes"
          f" ({summary['num_skipped']} skipped)")
    for split, counts in summary["counts"].items():
        print(f"  {split}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    sizes = summary["image_sizes"]
    print(f"  image sizes: {sizes['min']} .. {sizes['max']}; modes {summary['modes']}")
    for row in summary["skipped"][:20]:
        print(f"  skipped {row['path']}: {row['status']}")
    for warning in health["warnings"]:
        print(f"  warning: {warning}")
    balance = health["balance"]
    print(f"  imbalance ratio {balance['imbalance_ratio']}; suggested class weights {balance['class_weights']}")
    split = health["split"]
    generated = f" (val_fraction {split['val_fraction']}, seed {split['seed']})"
    print(f"  split: {split['source']} {split['sizes']}" + (generated if split["source"] == "generated" else ""))
    dup = health["duplicates"]
    for kind in ("exact", "near"):
        d = dup[kind]
        print(f"  {kind} duplicate pairs: {d['pairs']} (within class {d['within_class']}, conflicting labels "
              f"{d['conflicting_labels']}, across splits {d['across_splits']})")
    if "embedding" in health:
        print(f"  embedding: {health['embedding']['suspect']} of {health['embedding']['points']} images have "
              "neighbours that mostly carry another label")
    return 0


def cmd_predict(args) -> int:
    from engine.export.inference import OnnxClassifier

    if args.run_dir:  # predict --run RUN_DIR IMAGE...: the run's export; every argument is an image
        from engine.runs import Run

        args.images, args.model = [a for a in (args.model, *args.images) if a], str(Run(args.run_dir).onnx_file)
    if not args.images:
        raise UserError("give at least one image to predict")
    classifier = OnnxClassifier(args.model)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise UserError(f"image file '{missing[0]}' does not exist")
    run_dir = Path(args.model).resolve().parent.parent
    if (run_dir / "config.json").is_file():  # a run's export: add the unsure answer and the OOD flag
        from engine.export.analyse import analyse_images

        files = [(p, Path(p).read_bytes()) for p in args.images]
        result = analyse_images(run_dir, files, top_k=args.top_k, threshold=args.threshold, model_file=args.model,
                                budget=None)  # the operator's own command: no per-request budget
        rows = {r["file"]: r for r in result["rows"]} | {e["file"]: e for e in result["errors"]}
        for path in args.images:
            row = {k: v for k, v in rows[path].items() if k not in ("file", f"top-{args.top_k}")}
            print(json.dumps({"image": path, **row}))
        if args.run_dir:  # one summary line: the batch test against the training data
            from engine.cli.pool import predict_summary

            print(json.dumps(predict_summary(result)))
        return 0
    for path, result in zip(args.images, classifier.predict(args.images, top_k=args.top_k)):
        print(json.dumps({"image": path, **result}))
    return 0


def cmd_backbones(args) -> int:
    from engine.features.catalogue import backbone_catalogue

    if args.measure:
        from engine.features.latency import measure_latency

        for r in backbone_catalogue():
            if r["available"]:
                print(f"[backbones] measuring {r['backbone']} at {args.image_size} px", file=sys.stderr, flush=True)
                measure_latency(r["backbone"], args.image_size)
    rows = backbone_catalogue(image_size=args.image_size)
    if args.json:
        print_json(rows)
        return 0
    print(f"{'backbone':<20}{'family':<18}{'params(M)':>10}{'GFLOPs':>8}{'top1':>7}{'ORT ms b1':>10}{'b32':>7}  "
          f"weights")
    for r in rows:
        lat = (f"{r['ort_ms_b1']:>10.2f}{r['ort_ms_b32']:>7.2f}" if r.get("ort_ms_b1") is not None
               else f"{'-':>10}{'-':>7}")
        print(f"{r['backbone']:<20}{r['family']:<18}{r['params_m']:>10}{r['gflops']:>8}{r['imagenet_top1']:>7}{lat}  "
              f"{r['weights_source']}")
    return 0


def cmd_add_weights(args) -> int:
    from engine.models.supplied import install_weights

    path = install_weights(args.backbone, args.file)
    print(f"checked {args.file} against {args.backbone} key by key and shape by shape; stored as {path}")
    return 0


def cmd_setup(args) -> int:
    """Seed the offline weight cache, build the default dataset and the default backbone's feature graph
    at the Train page's suggested size (run by the README commands)."""
    from engine.data.builtin import DEFAULT_DATASET, materialise
    from engine.models.weights import seed_offline_weights

    for path in seed_offline_weights():
        print(f"seeded {path}")
    print(f"built-in dataset at {materialise(DEFAULT_DATASET)}")
    # The first click's probe then starts from a ready feature graph (exporting it costs ~10 s on 2 cores).
    from engine.features.extract import feature_extractor
    from engine.jobs.view import DEFAULT_BACKBONE, suggest_image_size

    size, _ = suggest_image_size(DEFAULT_BACKBONE, DEFAULT_DATASET)
    extractor = feature_extractor(DEFAULT_BACKBONE, size)
    print(f"feature graph of {DEFAULT_BACKBONE} at {size} px ready ({extractor.engine})")
    return 0


def add_commands(sub) -> None:
    """Register ``inspect``, ``predict``, ``backbones``, ``add-weights``, ``setup`` on ``sub``."""
    p = sub.add_parser("inspect", help="summarise a dataset")
    p.add_argument("data", help="folder of class subfolders, a .zip of the same, or a built-in dataset name")
    p.add_argument("--json", action="store_true")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--embedding", action="store_true", help="also compute the MobileNetV2 embedding map (slower)")
    p.add_argument("--embedding-max", type=int, default=2000, help="images sampled for the embedding map")
    p.add_argument("--embedding-method", default="pca", choices=["pca", "tsne"], help="2-D projection of the map")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("predict", help="classify images with an exported model (MODEL.onnx IMAGE...), or with a "
                       "run's export (--run RUN_DIR IMAGE...: per-image OOD flag, then a batch-test summary line)")
    p.add_argument("model", nargs="?", help="the .onnx file (omit with --run)")
    p.add_argument("images", nargs="*")
    p.add_argument("--run", dest="run_dir", help="a run directory: predict with its export")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--threshold", type=float, default=0.0, help="answer 'unsure' below this calibrated probability")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("backbones", help="list backbones, whether their weights load now, and latency measured here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--image-size", type=int, default=224, help="show the latency measured at this size")
    p.add_argument("--measure", action="store_true", help="measure every loadable backbone first (cached)")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("add-weights", help="check a weights file (safetensors or a state dict) against a "
                       "registered architecture and make it that backbone's pretrained weights")
    p.add_argument("backbone")
    p.add_argument("file")
    p.set_defaults(func=cmd_add_weights)

    p = sub.add_parser("setup", help="seed offline weights and the built-in dataset")
    p.set_defaults(func=cmd_setup)
