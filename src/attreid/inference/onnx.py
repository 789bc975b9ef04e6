"""ONNX export of a checkpoint, and :class:`OnnxPredictor`, which runs it with ONNX Runtime.

The exported graph takes ``images``: float32 (N, 3, H, W), RGB, resized to the training size and
normalised with the ImageNet mean/std (``(x / 255 - mean) / std``), N dynamic. It returns
``embedding`` (N, D) and one ``logits_<task>`` per attribute task in the order of
:data:`attreid.schema.TASKS`: (N, 1) for binary tasks (sigmoid gives P(class 1)), (N, C)
otherwise (softmax). The preprocessing, the tasks and their classes, the tasks the model was
trained on (``attreid.trained_tasks``: the others' logits come from heads that never saw a
label; an export without the key is of a model trained on all tasks), the distance and the
source checkpoint's sha256 are written into the model's metadata (``metadata_props``), so the
file is self-describing; :class:`OnnxPredictor` reads them from there.

The TorchScript-based exporter is used: the torch.export-based one fails on the attention
variant with torch 2.14.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from attreid.data.io import check_channels
from attreid.data.transforms import TransformConfig, build_transforms
from attreid.errors import AttreidError
from attreid.inference.extraction import Features
from attreid.inference.predictor import (
    ImageInput,
    Prediction,
    Predictor,
    _check_batch,
    make_prediction,
    preprocess_images,
    trained_tasks_of,
)
from attreid.schema import TASKS
from attreid.utils.files import current_umask

OPSET = 17
OUTPUTS = ("embedding",) + tuple(f"logits_{t.name}" for t in TASKS)


class ExportError(AttreidError, RuntimeError):
    """The model cannot be exported or the ONNX file cannot be read; the message names it."""


class _Flat(nn.Module):
    """The model with a flat tuple output: embedding, then the logits of each task."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return (out.embedding, *(out.attribute_logits[t.name] for t in TASKS))


def _metadata(predictor: Predictor) -> dict[str, str]:
    tc = predictor.transform_config
    return {
        "attreid.format": "1",
        "attreid.checkpoint_sha256": predictor.checkpoint_sha256,
        "attreid.model": json.dumps(predictor.model.config),
        "attreid.distance": predictor.distance,
        "attreid.tasks": json.dumps([[t.name, list(t.classes)] for t in TASKS]),
        "attreid.trained_tasks": json.dumps(list(predictor.trained_tasks)),
        "attreid.preprocess": json.dumps({
            "layout": "NCHW float32 RGB", "height": tc.height, "width": tc.width,
            "resize": "bilinear, antialiased, to (height, width)",
            "normalise": "(pixel / 255 - mean) / std", "mean": list(tc.mean),
            "std": list(tc.std)}),
        "attreid.outputs": json.dumps({
            "embedding": "(N, D) re-ID embedding", "logits_<task>":
            "(N, 1) binary: sigmoid = P(class 1); (N, C) otherwise: softmax"}),
    }


def export_onnx(checkpoint: Path | str, out: Path | str, opset: int = OPSET) -> Path:
    """Export ``checkpoint`` to an ONNX file at ``out`` (written atomically).

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ExportError: the export or the ONNX check fails.
    """
    import onnx

    predictor = Predictor(checkpoint, device="cpu")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tc = predictor.transform_config
    example = torch.randn(2, 3, tc.height, tc.width)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on shape checks, deprecation
            torch.onnx.export(_Flat(predictor.model).eval(), (example,), tmp,
                              input_names=["images"], output_names=list(OUTPUTS),
                              dynamic_axes={n: {0: "batch"} for n in ("images", *OUTPUTS)},
                              opset_version=opset, dynamo=False)
        model = onnx.load(tmp)
        for key, value in _metadata(predictor).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        onnx.save(model, tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp made it 0600
        os.replace(tmp, out)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ExportError(f"{checkpoint}: ONNX export failed ({exc})") from exc
    return out


class OnnxPredictor:
    """:class:`~attreid.Predictor`'s interface on an exported ONNX file, with ONNX Runtime
    (``trained_tasks`` included, from the file's metadata).

    Example::

        predictor = OnnxPredictor("model.onnx")
        result = predictor.predict(["a.jpg"])   # the same Prediction as Predictor's
    """

    def __init__(self, path: Path | str, batch_size: int = 64, flip: bool = False,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.checkpoint = Path(path)
        if not self.checkpoint.is_file():
            raise ExportError(f"{path}: ONNX model not found")
        options = ort.SessionOptions()
        self.threads = threads  # None: ONNX Runtime's default (one per physical core)
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"{path}: cannot load ONNX model ({exc})") from exc
        names = [o.name for o in self.session.get_outputs()]
        # None (every output, in the file's order) where that order is OUTPUTS: naming them
        # costs ONNX Runtime about 70 us a call, 12 % of a one-crop query
        self._outputs = None if tuple(names) == OUTPUTS else list(OUTPUTS)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("attreid.format") != "1":
            raise ExportError(f"{path}: not an attreid ONNX export (no attreid metadata)")
        pre = json.loads(meta["attreid.preprocess"])
        self.transform_config = TransformConfig(height=pre["height"], width=pre["width"],
                                                mean=tuple(pre["mean"]), std=tuple(pre["std"]))
        self._transform = build_transforms(self.transform_config, train=False)
        self.checkpoint_sha256 = meta["attreid.checkpoint_sha256"]
        self.distance = meta["attreid.distance"]
        self.model_config = json.loads(meta["attreid.model"])
        try:  # an export made before the key existed: a model trained on all tasks
            recorded = meta.get("attreid.trained_tasks")
            self.trained_tasks: tuple[str, ...] = trained_tasks_of(
                None if recorded is None else json.loads(recorded))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise ExportError(f"{path}: bad metadata attreid.trained_tasks ({exc})") from None
        self.batch_size = batch_size
        self.flip = flip

    @property
    def embedding_dim(self) -> int:
        return int(self.model_config["embedding_dim"])

    def preprocess(self, images: Sequence[ImageInput] | torch.Tensor,
                   channels: str | None = None) -> np.ndarray:
        """Decode, resize and normalise as :class:`~attreid.Predictor` does (the same
        :func:`~attreid.inference.predictor.preprocess_images`): (N, 3, H, W) float32."""
        return np.ascontiguousarray(
            preprocess_images(images, self._transform, channels).cpu().numpy())

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.session.run(self._outputs, {"images": x})
        if not self.flip:
            return out
        flipped = self.session.run(self._outputs, {"images": np.ascontiguousarray(x[..., ::-1])})
        return [(a + b) / 2 for a, b in zip(out, flipped)]

    def embed_batch(self, x: torch.Tensor) -> Features:
        """Outputs of one preprocessed batch ``x`` (N, 3, H, W) float32, as
        :meth:`attreid.Predictor.embed_batch`."""
        out = self._run(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))
        return Features(torch.from_numpy(out[0]).float(),
                        {t.name: torch.from_numpy(v) for t, v in zip(TASKS, out[1:])})

    def predict(self, images: Sequence[ImageInput] | torch.Tensor,
                channels: str | None = None) -> Prediction:
        """Embed images and predict their attributes; inputs and ``channels`` as
        :meth:`Predictor.predict` (paths, PIL images, numpy arrays with their channel order, a
        uint8 or preprocessed float tensor (N, 3, H, W))."""
        channels = check_channels(channels)
        images = _check_batch(images)
        if not len(images):
            raise ValueError("predict() needs at least one image")
        parts = [self._run(self.preprocess(images[i:i + self.batch_size], channels))
                 for i in range(0, len(images), self.batch_size)]
        merged = [np.concatenate(p) for p in zip(*parts)]
        logits = {t.name: torch.from_numpy(v) for t, v in zip(TASKS, merged[1:])}
        return make_prediction(merged[0].astype(np.float32), logits, self.trained_tasks)


__all__ = ["ExportError", "OnnxPredictor", "export_onnx"]
