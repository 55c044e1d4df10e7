"""Deployment: cyconv.compile's one-call predictor (predictor.py), ONNX export and import (onnx.py; needs the
onnx package), and `cyconv serve` (serve.py and static/; needs the serve extra, imported only when run)."""
