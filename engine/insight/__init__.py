"""What transfer learning buys on the user's data: data-efficiency curve, which layers transfer,
domain distance from the pretraining data, transfer gain, and the advice that follows.

``engine.insight.curve``   probe accuracy vs labelled images per class, scratch baseline, learning-curve fit
``engine.insight.stages``  a linear probe on every backbone stage's pooled features
``engine.insight.domain``  the backbone's ImageNet head on the user's images: class mapping, distance
``engine.insight.gain``    scratch vs probe vs fine-tune from the user's runs
``engine.insight.report``  all of them, the advice, and where the pages find the stored result
"""
from engine.insight.report import advice, compute_insight, format_insight, insight_folder, load_insight

__all__ = ["advice", "compute_insight", "format_insight", "insight_folder", "load_insight"]
