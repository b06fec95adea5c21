"""Lower-precision copies of an exported fp32 ONNX model: fp16 and static int8.

Both read the fp32 file written by :mod:`engine.export.pipeline` and write a sibling
file; neither changes the inputs or outputs (float32 in, float32 logits out),
so every consumer keeps the same preprocessing.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.onnx_io import save_checked

__all__ = ["convert_fp16", "quantize_int8", "quantization_choices", "copy_metadata", "INT8_CALIBRATION_IMAGES",
           "INT8_HOLDOUT_IMAGES", "INT8_EXCLUDE_STEPS"]

# MinMax ranges are stable by ~100 images; more only slows calibration (and widens ranges with outliers).
INT8_CALIBRATION_IMAGES = 128
# Other training images on which the candidates are compared with fp32 (never the validation split).
INT8_HOLDOUT_IMAGES = 1024
# How many of the most sensitive nodes each candidate keeps in float.
INT8_EXCLUDE_STEPS = (2, 4, 8)


def copy_metadata(source, target) -> None:
    """Put ``source``'s metadata_props on ``target`` (both ModelProto)."""
    del target.metadata_props[:]
    for prop in source.metadata_props:
        entry = target.metadata_props.add()
        entry.key, entry.value = prop.key, prop.value


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """fp16 weights and arithmetic, float32 inputs and outputs (casts at the edges).

    Uses onnxruntime's own converter (``onnxruntime.transformers.float16``).
    Its edge casts are appended after the nodes that use them, so the graph is
    topologically re-sorted before the checker sees it.
    """
    import onnx
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = onnx.load(str(fp32_path))
    # Softmax/ReduceMean-free classifier: nothing needs an fp32 island besides the IO.
    converted = convert_float_to_float16(source, keep_io_types=True, disable_shape_infer=False)
    model = ir.from_proto(converted)
    model.graph.sort()
    proto = ir.to_proto(model)
    copy_metadata(source, proto)
    save_checked(proto, Path(out_path))


class _ArrayReader:
    """onnxruntime CalibrationDataReader over a float32 NCHW array, in small batches."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 16):
        self.input_name = input_name
        self._batches = iter([data[i : i + batch] for i in range(0, len(data), batch)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return self

    def __next__(self):
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def _session(path: Path):
    import onnxruntime as ort

    from engine.device import ort_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = ort_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _logits(path: Path, x: np.ndarray, input_name: str) -> tuple[np.ndarray, float]:
    """Logits of ``x`` and milliseconds per image (batches of 32, after one warm-up batch)."""
    import time

    session = _session(path)
    output = session.get_outputs()[0].name
    session.run([output], {input_name: x[:32]})
    t0, out = time.perf_counter(), []
    for i in range(0, len(x), 32):
        out.append(session.run([output], {input_name: x[i : i + 32]})[0])
    return np.concatenate(out), 1000 * (time.perf_counter() - t0) / max(1, len(x))


def _sensitivity(pre: Path, full: Path, data: np.ndarray, input_name: str, tmp: Path) -> list[tuple[str, float]]:
    """Nodes ranked by how much signal-to-quantisation-noise their quantisation costs.

    ``onnxruntime.quantization.qdq_loss_debug`` gives, for each activation, the SQNR
    between the float model and the int8 model (``xmodel_err``, in dB). A node's cost is
    the drop from its worst input to its output. ReLU6 (Clip) nodes are folded into the
    quantisation of the node before them, so their output stands for that node's.
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    dbg.modify_model_output_intermediate_tensors(str(pre), str(tmp / "float.aug.onnx"))
    dbg.modify_model_output_intermediate_tensors(str(full), str(tmp / "qdq.aug.onnx"))
    floats = dbg.collect_activations(str(tmp / "float.aug.onnx"), _ArrayReader(input_name, data))
    quants = dbg.collect_activations(str(tmp / "qdq.aug.onnx"), _ArrayReader(input_name, data))
    errors = dbg.compute_activation_error(dbg.create_activation_matching(quants, floats))
    graph = onnx.load(str(pre)).graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def measured(tensor: str) -> str:  # the quantised tensor standing for ``tensor`` (through a folded Clip)
        after = consumers.get(tensor, [])
        if tensor not in errors and len(after) == 1 and after[0].op_type in ("Clip", "Relu"):
            return after[0].output[0]
        return tensor

    def sqnr_in(tensor: str) -> float:
        while tensor not in errors and tensor in producer and producer[tensor].op_type in ("Clip", "Relu"):
            tensor = producer[tensor].input[0]
        return float(errors[tensor]["xmodel_err"]) if tensor in errors else float("inf")

    ranked = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul", "Add"):
            continue
        out = measured(node.output[0])
        if out not in errors:
            continue
        inputs = [sqnr_in(i) for i in node.input if i in producer or i == input_name]
        worst_in = min(inputs) if inputs else float("inf")
        if not np.isfinite(worst_in):
            worst_in = 100.0  # the graph input: no error yet
        ranked.append((node.name, round(worst_in - float(errors[out]["xmodel_err"]), 3)))
    return sorted(ranked, key=lambda item: -item[1])


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, input_name: str = "image",
                  holdout: np.ndarray | None = None, report: tuple[np.ndarray, np.ndarray] | None = None,
                  exclude_steps: tuple[int, ...] = INT8_EXCLUDE_STEPS) -> dict:
    """Static int8 (QDQ, per-channel weights, uint8 activations), MinMax-calibrated, keeping in float
    the few nodes whose quantisation hurts most.

    ``calibration`` is float32 NCHW, already normalised exactly as inference feeds the model
    (training images). ``quant_pre_process`` runs first (shape inference + graph optimisation),
    as onnxruntime's quantisation guide asks. Then, with ``holdout`` (other training images):
    the fully quantised model's per-node SQNR drop is measured with ``qdq_loss_debug``; models
    keeping the worst 0, 2, 4, 8 nodes in float are built, and the one agreeing best with
    fp32 on the holdout images wins (on a tie, the one with fewer float nodes).
    ``report`` (validation images, labels) only adds each
    candidate's accuracy to the returned table, for the Export page; it never picks.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="ts-quant-") as tmp_name:
        tmp = Path(tmp_name)
        pre = tmp / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)

        def build(exclude: list[str], path: Path) -> Path:
            quantize_static(str(pre), str(path), _ArrayReader(input_name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=exclude)
            return path

        full = build([], tmp / "int8-0.onnx")
        candidates: list[dict[str, Any]] = [{"float_nodes": 0, "excluded": [], "path": full}]
        ranking: list[tuple[str, float]] = []
        if holdout is not None and len(holdout):
            holdout = np.ascontiguousarray(holdout, dtype=np.float32)
            ranking = _sensitivity(pre, full, calibration[:32], input_name, tmp)
            for k in exclude_steps:
                if 0 < k <= len(ranking):
                    names = [name for name, _ in ranking[:k]]
                    candidates.append({"float_nodes": k, "excluded": names,
                                       "path": build(names, tmp / f"int8-{k}.onnx")})
            reference, fp32_ms = _logits(Path(fp32_path), holdout, input_name)
            for c in candidates:
                got, c["ms_per_image"] = _logits(c["path"], holdout, input_name)
                c["holdout_agreement"] = float((got.argmax(1) == reference.argmax(1)).mean())
            # The best agreement wins; on a tie, the fewest nodes in float (smaller, faster).
            chosen = max(candidates, key=lambda c: (c["holdout_agreement"], -c["float_nodes"]))
        else:
            chosen = candidates[0]
        rows = []
        for c in candidates:
            row = {"float_nodes": c["float_nodes"], "excluded": c["excluded"], "bytes": c["path"].stat().st_size,
                   "ms_per_image": c.get("ms_per_image"), "holdout_agreement": c.get("holdout_agreement"),
                   "chosen": c is chosen}
            if report is not None and len(report[0]):
                got, _ms = _logits(c["path"], np.ascontiguousarray(report[0], dtype=np.float32), input_name)
                row["val_accuracy"] = float((got.argmax(1) == np.asarray(report[1])).mean())
            rows.append(row)
        proto = onnx.load(str(chosen["path"]))
    copy_metadata(onnx.load(str(fp32_path), load_external_data=False), proto)
    save_checked(proto, Path(out_path))
    info = {"calibration_images": int(len(calibration)), "method": "MinMax", "format": "QDQ",
            "weights": "int8 per-channel", "activations": "uint8 per-tensor",
            "float_nodes": chosen["excluded"], "candidates": rows,
            "selection": (f"kept in float the {len(chosen['excluded'])} node(s) with the largest SQNR drop "
                          f"(onnxruntime qdq_loss_debug), chosen by top-1 agreement with fp32 on "
                          f"{len(holdout)} held-out training images") if holdout is not None and len(holdout)
            else "all nodes quantised (no held-out images to choose with)"}
    if ranking:
        info["sensitivity_db"] = ranking[:16]
    if "ms_per_image" in chosen:
        info["fp32_ms_per_image"] = fp32_ms
    return info


def quantization_choices(parity: dict) -> list[dict]:
    """What each int8 choice the export tried costs: size, speed, agreement and accuracy, beside fp32.

    Read from ``parity.json`` (the int8 variant's ``quantization.candidates``); empty when
    int8 was not exported or was exported before the choices were recorded.
    """
    variants = parity.get("variants") or {}
    info = (variants.get("int8") or {}).get("quantization") or {}
    candidates = info.get("candidates") or []
    if not candidates:
        return []
    fp32 = variants.get("fp32") or {}
    base = fp32.get("accuracy")
    rows = [{"choice": "fp32 (no quantisation)", "MB": round(fp32.get("bytes", 0) / 1e6, 2),
             "ms / image": None if info.get("fp32_ms_per_image") is None else round(info["fp32_ms_per_image"], 3),
             "holdout agreement %": 100.0,
             "validation accuracy %": None if base is None else round(100 * base, 2), "Δ accuracy (points)": 0.0,
             "chosen": False}]
    for c in candidates:
        k = c["float_nodes"]
        acc = c.get("val_accuracy")
        rows.append({
            "choice": "int8, every node" if k == 0 else f"int8, {k} most sensitive node(s) in float",
            "MB": round(c["bytes"] / 1e6, 2),
            "ms / image": None if c.get("ms_per_image") is None else round(c["ms_per_image"], 3),
            "holdout agreement %": (None if c.get("holdout_agreement") is None
                                    else round(100 * c["holdout_agreement"], 2)),
            "validation accuracy %": None if acc is None else round(100 * acc, 2),
            "Δ accuracy (points)": None if acc is None or base is None else round(100 * (acc - base), 2),
            "chosen": bool(c.get("chosen")),
        })
    return rows
