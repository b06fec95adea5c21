"""Benchmarks behind ``python -m engine bench ...``: figures and ratios against a baseline measured in the same run.

``engine.bench.abuse``   hostile uploads in child processes: peak RSS and what the visitor was told, vs 2 GB
``engine.bench.health``  dataset health check images/s vs a naive decode-and-hash loop
``engine.bench.infer``   inference latency/throughput: PyTorch eager vs onnxruntime variants
``engine.bench.train``   training images/s: the real data path vs synthetic on-device data
"""

__all__: list[str] = []
