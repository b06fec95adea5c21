"""Lower-precision copies of an exported fp32 ONNX model: fp16 and static int8.

Both read the fp32 file written by :mod:`engine.export.pipeline` and write a sibling
file; neither changes the inputs or outputs (float32 in, float32 logits out),
so every consumer keeps the same preprocessing.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.export.onnx_export import save_checked

__all__ = ["convert_fp16", "quantize_int8", "copy_metadata", "INT8_CALIBRATION_IMAGES"]

# MinMax ranges are stable by ~100 images; more only slows calibration (and widens ranges with outliers).
INT8_CALIBRATION_IMAGES = 128


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

    def __init__(self, input_name: str, batches: Iterator[np.ndarray]):
        self.input_name = input_name
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, input_name: str = "image") -> dict:
    """Static int8 (QDQ, per-channel weights, uint8 activations), MinMax-calibrated.

    ``calibration`` is float32 NCHW, already normalised exactly as inference
    feeds the model (training images, not the validation images the parity
    gate scores). ``quant_pre_process`` runs first (shape inference + graph
    optimisation), as onnxruntime's quantisation guide asks.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    batches = (calibration[i : i + 16] for i in range(0, len(calibration), 16))
    with tempfile.TemporaryDirectory(prefix="ts-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre),
            str(staged),
            _ArrayReader(input_name, batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(staged))
    copy_metadata(onnx.load(str(fp32_path), load_external_data=False), proto)
    save_checked(proto, Path(out_path))
    return {"calibration_images": int(len(calibration)), "method": "MinMax", "format": "QDQ",
            "weights": "int8 per-channel", "activations": "uint8 per-tensor"}
