"""Prediction with onnxruntime from an exported model and its recorded preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.data.images import ImageProblem, load_rgb, resize_center_crop
from engine.device import ort_threads
from engine.errors import UserError
from engine.idle_cache import IdleCache

__all__ = ["OnnxClassifier", "get_classifier", "release_idle_models", "softmax"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row softmax of ``logits / temperature`` in float32 (the bundle's predict.py does the same ops)."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OnnxClassifier:
    """An onnxruntime session plus the preprocessing stored in the model file.

    ``InferenceSession.run`` is thread-safe, so one instance serves every user.
    """

    def __init__(self, path: Path | str, providers: list[str] | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"model file '{path}' does not exist; export the run first")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = ort_threads()
        options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise UserError(f"'{path.name}' is not a loadable ONNX model ({type(exc).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "transfer_studio.preprocess" not in meta:
            sidecar = path.with_name("preprocess.json")
            if not sidecar.is_file():
                raise UserError(f"'{path.name}' carries no preprocessing metadata and has no preprocess.json beside it")
            self.preprocess = json.loads(sidecar.read_text())
        else:
            self.preprocess = json.loads(meta["transfer_studio.preprocess"])
        self.classes: list[str] = self.preprocess["classes"]
        self.input_name = self.session.get_inputs()[0].name
        # Exports since issue 11 also output the pooled backbone features (for the OOD score).
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.has_features = "features" in self.output_names
        # "uint8": the fp32-uint8in variant, normalisation inside the graph, NHWC pixels in.
        self.input_dtype: str = self.preprocess.get("input_dtype", "float32")
        # Older exports carry no temperature: plain softmax, as they were checked.
        self.temperature = float(self.preprocess.get("temperature", 1.0))
        self.providers = self.session.get_providers()
        self.path = path

    def prepare(self, image) -> np.ndarray:
        """Path, file object or PIL image -> normalised CHW float32 (or HWC uint8 for a uint8-input model)."""
        img = image if hasattr(image, "mode") and hasattr(image, "size") else load_rgb(image)
        if img.mode != "RGB":
            img = img.convert("RGB")
        pixels = resize_center_crop(img, self.preprocess["input_size"])
        if self.input_dtype == "uint8":
            return pixels
        scaled = pixels.astype(np.float32) / 255.0
        mean, std = np.asarray(self.preprocess["mean"], np.float32), np.asarray(self.preprocess["std"], np.float32)
        arr = (scaled - mean) / std
        return arr.transpose(2, 0, 1)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.logits_and_features(batch, features=False)[0]

    def logits_and_features(self, batch: np.ndarray, features: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits, and the pooled features when the model outputs them (else None)."""
        names = ["logits", "features"] if features and self.has_features else [self.output_names[0]]
        logits, feats = [], []
        for start in range(0, len(batch), 64):
            chunk = np.ascontiguousarray(batch[start : start + 64],
                                         dtype=np.uint8 if self.input_dtype == "uint8" else np.float32)
            out = self.session.run(names, {self.input_name: chunk})
            logits.append(out[0])
            if len(out) > 1:
                feats.append(out[1])
        if not logits:
            return np.zeros((0, len(self.classes)), np.float32), None
        return np.concatenate(logits), (np.concatenate(feats) if feats else None)

    def predict(self, images: list, top_k: int = 3) -> list[dict]:
        """Top-k classes per image; an unreadable image gets an ``error`` instead."""
        top_k = max(1, min(top_k, len(self.classes)))
        prepared: list[np.ndarray | None] = []
        results: list[dict] = []
        for image in images:
            try:
                prepared.append(self.prepare(image))
                results.append({})  # filled in below
            except ImageProblem as exc:
                prepared.append(None)
                results.append({"error": str(exc)})
        good = [p for p in prepared if p is not None]
        logits = self.logits(np.stack(good)) if good else np.zeros((0, len(self.classes)), np.float32)
        probs = softmax(logits, self.temperature)
        it = iter(probs)
        for i, p in enumerate(prepared):
            if p is None:
                continue
            row = next(it)
            order = np.argsort(-row)[:top_k]
            results[i] = {"top_k": [{"class": self.classes[j], "probability": float(row[j])} for j in order]}
        return results


def _idle_s() -> float:
    from engine.settings.limits import limits

    return limits().model_idle_minutes * 60


# Keyed by the model file (a run's export): one session per run, shared by every session that uses it,
# released after TS_MODEL_IDLE_MINUTES without use.
_CACHE: IdleCache[OnnxClassifier] = IdleCache(_idle_s, max_entries=16)


def get_classifier(path: Path | str) -> OnnxClassifier:
    """One shared session per model file (re-created when the file changes, released when idle)."""
    path = Path(path).resolve()
    return _CACHE.get(str(path), path.stat().st_mtime if path.exists() else 0.0, lambda: OnnxClassifier(path))


def release_idle_models() -> int:
    """Release the models no one has used for the idle time (the app calls this on every page run)."""
    return _CACHE.release_idle()
