"""attreid: joint pedestrian attribute recognition and person re-identification."""

from importlib.metadata import PackageNotFoundError, version

from attreid.utils.backend import cap_onednn_isa

cap_onednn_isa()  # before any CPU kernel runs: no AMX bf16 kernels (see attreid.utils.backend)

try:
    __version__ = version("attreid")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"


def __getattr__(name: str):  # lazy: `import attreid` stays light; attreid.Predictor loads torch
    if name == "Predictor":
        from attreid.inference.predictor import Predictor

        return Predictor
    if name == "load_predictor":  # the fastest verified backend here (ONNX Runtime, bf16, fp32)
        from attreid.inference.backends import load_predictor

        return load_predictor
    raise AttributeError(f"module 'attreid' has no attribute {name!r}")
