"""Export: ONNX variants of a run, their calibration and parity gate, the download bundle, and inference.

``engine.export.variants``       variant names and files, the recorded preprocessing
``engine.export.quantize``       fp16 and static int8 copies of the fp32 model
``engine.export.calibration``    temperature scaling on the validation split
``engine.export.parity``         the parity gate against PyTorch, the parity table rows
``engine.export.pipeline``       ``export_run``: all of the above for one run
``engine.export.bundle``         the download zip with a model card
``engine.export.bundle_predict`` the standalone predict.py shipped in the bundle
``engine.export.inference``      onnxruntime prediction with the recorded preprocessing
"""
from engine.export.calibration import fit_temperature
from engine.export.parity import (PARITY_ATOL, ExportParityError, check_parity, gate_failure, gate_label,
                                  parity_rows)
from engine.export.pipeline import export_run
from engine.export.variants import OPSET, STRICT_VARIANTS, VARIANTS, preprocess_record, variant_path
from engine.workspace import file_sha256

__all__ = [
    "export_run",
    "check_parity",
    "preprocess_record",
    "fit_temperature",
    "variant_path",
    "file_sha256",
    "gate_failure",
    "gate_label",
    "parity_rows",
    "ExportParityError",
    "PARITY_ATOL",
    "OPSET",
    "VARIANTS",
    "STRICT_VARIANTS",
]
