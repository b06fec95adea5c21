"""``python -m engine bench shift DATA [DATA ...]``: the batch test's false alarms and its power, measured
through the real predict path.

For each dataset a linear probe is trained and exported (the bench's own run, in the current workspace),
then :func:`engine.export.analyse.analyse_images` (what the Predict page and ``predict --run`` call) is given:

* ``draws`` seeded batches of ``batch`` held-out images of the same dataset (its test split, else validation):
  drawn like the training images, so the batch test should pass. Issue 20's target: p > 0.05 in at least
  95 % of the draws (the product says "differs" only below ``ALPHA``, 0.01);
* the same number of batches of the training images the test's reference sample does not hold, where there
  are enough: the test's own control. They are exchangeable with the reference by construction, so p > 0.05
  in about 95 % of them says the test is calibrated; held-out images that fail more often than these differ
  from the training images for real (a built-in set whose validation backgrounds come from other parts of
  the photographs does);
* ``photo_draws`` seeded batches of ``batch`` crops of scikit-image's photographs, unlike digits, garments or
  textures: the test should say so every time (target: p < 0.01).
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np

from engine.errors import UserError

__all__ = ["bench_shift", "format_table", "photo_crops", "PHOTOS"]

# scikit-image's bundled photographs, less the ones the built-in texture and garment sets are made of
# (brick, grass, gravel, moon, camera): against those sets these would not be new data.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "horse", "coins", "immunohistochemistry", "hubble_deep_field",
          "retina", "page", "text", "clock", "colorwheel")


def photo_crops(n: int, seed: int = 0, side: int = 96) -> list[tuple[str, bytes]]:
    """``n`` seeded random square crops (40-90 % of the short side) of scikit-image's photographs, as PNG files."""
    import skimage.data
    from PIL import Image

    photos = []
    for name in PHOTOS:
        arr = np.asarray(getattr(skimage.data, name)())
        arr = np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]
        if arr.dtype != np.uint8:  # horse is a boolean mask
            arr = (255 * (arr.astype(np.float64) / max(1e-9, float(arr.max())))).astype(np.uint8)
        photos.append(arr)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = photos[int(rng.integers(len(photos)))]
        crop = int(min(arr.shape[:2]) * rng.uniform(0.4, 0.9))
        y, x = rng.integers(0, arr.shape[0] - crop + 1), rng.integers(0, arr.shape[1] - crop + 1)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr[y:y + crop, x:x + crop])).resize((side, side)).save(buf, "PNG")
        out.append((f"photo-{seed}-{i}.png", buf.getvalue()))
    return out


def _exported_probe(data: str, backbone: str, image_size: int):
    """The bench's own linear probe on ``data``, trained, evaluated (the OOD reference) and exported."""
    from engine.evaluation import evaluate_run
    from engine.export import export_run
    from engine.runs import new_run
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    config = TrainConfig(dataset=data, backbone=backbone, mode="linear", image_size=image_size)
    run = new_run("shift-bench")
    run.write_config(config.to_dict())
    train(config, run)
    evaluate_run(run.path)
    export_run(run.path)
    return run


def _batch_tests(run_dir, batches) -> list[dict]:
    from engine.export.analyse import analyse_images

    out = []
    for files in batches:
        test = analyse_images(run_dir, files, budget=None).get("batch_test") or {}
        if not test.get("available"):
            raise RuntimeError(f"no batch test on {len(files)} images: {test.get('reason', 'no OOD reference')}")
        out.append(test)
    return out


def _summary(tests: list[dict]) -> dict:
    p = np.array([t["p_value"] for t in tests])
    flagged = np.array([t["flagged_share"] or 0.0 for t in tests])
    return {"draws": len(tests), "p_median": round(float(np.median(p)), 4), "p_min": round(float(p.min()), 4),
            "p_max": round(float(p.max()), 4), "share_p_over_0.05": round(float((p > 0.05).mean()), 3),
            "share_said_to_differ": round(float(np.mean([t["shifted"] for t in tests])), 3),
            "share_p_under_0.01": round(float((p < 0.01).mean()), 3),
            "flagged_share_mean": round(float(flagged.mean()), 3)}


def bench_shift(data: str, backbone: str = "mobilenet_v2", image_size: int = 96, draws: int = 100, batch: int = 50,
                photo_draws: int = 20, progress: Callable[[str], None] | None = None) -> dict:
    from engine.data.dataset import load_dataset
    from engine.evaluation.ood import stored_rows
    from engine.evaluation.shift import reference_rows
    from engine.features import split_features

    say = progress or (lambda message: None)
    t0 = time.perf_counter()
    dataset = load_dataset(data)
    held_out = "test" if dataset.has_test else "val"
    paths = dataset.usable.loc[dataset.usable["split"] == held_out, "path"].tolist()
    if len(paths) < batch:
        raise UserError(f"{data} has {len(paths)} {held_out} images, fewer than a batch of {batch}: use a smaller "
                        "--batch")
    say(f"{data}: training and exporting a linear probe at {image_size} px")
    run = _exported_probe(data, backbone, image_size)
    train_s = time.perf_counter() - t0
    # The OOD reference keeps the probe's training features in the feature cache's order (a sample of them
    # past MAX_REFERENCE_IMAGES); the batch test's reference is a sample of those.
    train_paths = split_features(dataset, "train", backbone, image_size, dataset.classes).paths
    stored = stored_rows(len(train_paths))
    outside = np.setdiff1d(np.arange(len(train_paths)), stored[reference_rows(len(stored))])
    control_paths = [train_paths[i] for i in outside]

    def draw(pool: list[str], seed: int) -> list[tuple[str, bytes]]:
        picks = sorted(np.random.default_rng(seed).choice(len(pool), batch, replace=False))
        return [(pool[i], (dataset.root / pool[i]).read_bytes()) for i in picks]

    t1 = time.perf_counter()
    say(f"{data}: {draws} batches of {batch} {held_out} images")
    in_dist = _batch_tests(run.path, (draw(paths, seed) for seed in range(draws)))
    control = None
    if len(control_paths) >= 2 * batch:
        say(f"{data}: {draws} batches of {batch} training images outside the reference (the control)")
        control = _summary(_batch_tests(run.path, (draw(control_paths, seed) for seed in range(draws))))
    say(f"{data}: {photo_draws} batches of {batch} photographs")
    photos = _batch_tests(run.path, (photo_crops(batch, seed=seed) for seed in range(photo_draws)))
    batches = draws * (2 if control else 1) + photo_draws
    return {"dataset": data, "backbone": backbone, "image_size": image_size, "batch": batch,
            "held_out": held_out, "held_out_images": len(paths), "control_images": len(control_paths),
            "run": str(run.path), "same_data": _summary(in_dist), "control": control,
            "photographs": _summary(photos), "train_s": round(train_s, 1),
            "seconds_per_batch": round((time.perf_counter() - t1) / batches, 2)}


def format_table(results: list[dict]) -> str:
    """Markdown: for each dataset, the batch test on its own held-out images, on the control, on photographs."""
    lines = ["| dataset | batches of | held-out images: p > 0.05 | said to differ (p < 0.01) | median p | "
             "control (training images outside the reference): p > 0.05 | said to differ | photographs: p < 0.01 | "
             "largest p | flagged per image | s per batch |", "|---" * 11 + "|"]
    for r in results:
        s, c, o = r["same_data"], r["control"], r["photographs"]
        control = (f"{100 * c['share_p_over_0.05']:.0f} % of {c['draws']} | {100 * c['share_said_to_differ']:.0f} %"
                   if c else f"- ({r['control_images']} images) | -")
        lines.append(f"| {r['dataset']} ({r['held_out']}, {r['held_out_images']} images) | {r['batch']} | "
                     f"{100 * s['share_p_over_0.05']:.0f} % of {s['draws']} | "
                     f"{100 * s['share_said_to_differ']:.0f} % | {s['p_median']:.2f} | {control} | "
                     f"{100 * o['share_p_under_0.01']:.0f} % of {o['draws']} | {o['p_max']:.4f} | "
                     f"{100 * o['flagged_share_mean']:.0f} % | {r['seconds_per_batch']:.2f} |")
    return "\n".join(lines)
