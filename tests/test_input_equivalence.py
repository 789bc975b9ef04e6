"""One decoding path for every image input: a file, the same file opened with PIL and its pixels
as a uint8 tensor give the same embedding and the same search results, in every image mode.

Before, a PIL image only got ``convert("RGB")`` (16-bit grey turned white, alpha dropped to show
the colour it hid) and a uint8 tensor was resized by ``F.interpolate`` instead of PIL. Now a path
goes through ``read_image``, a PIL image through ``to_rgb`` (what ``read_image`` applies), and a
uint8 tensor is made a PIL image and resized by the same PIL transform.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require
from PIL import Image

from attreid.data.io import ImageInputError, read_image, to_rgb
from attreid.inference.predictor import Predictor

SIZE = (37, 90)  # (width, height): not the model's 64x128, so every input is resized
EMBEDDING_ATOL = 1e-6
"""Path, PIL and uint8-tensor inputs reach the model as the *same* float tensor (asserted with
torch.equal), in batches of the same size, so a deterministic CPU forward gives the same
embedding: the measured difference is 0.0. 1e-6 (against embedding norms of 0.5 to 2.6) leaves
room only for a backend's reduction order. Measured on the tiny checkpoint, the faults this
guards against moved embeddings far more: the old PIL convert("RGB") by up to 0.65 per component
(L2 2.15) on these crops, the old F.interpolate resize of uint8 tensors by up to 0.0024 per
component (1.5% of the norm; pixels up to 0.98/255 apart after the resize)."""


# ---- files in every mode ---------------------------------------------------------------------


def _write_png16(path: Path, samples: np.ndarray, color_type: int) -> None:
    """A 16-bit-per-sample PNG (PIL cannot write 48-bit RGB): ``samples`` uint16 (H, W, C)."""
    height, width = samples.shape[:2]
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _grey16(rng: np.random.Generator) -> np.ndarray:
    """16-bit grey: top half 30*256, bottom half 160*256 (PIL's convert made both 255), random
    low bytes, and a random 16-bit block."""
    width, height = SIZE
    values = np.where(np.arange(height)[:, None] < height // 2, 30 * 256, 160 * 256)
    values = values + rng.integers(0, 256, (height, width))
    values[10:30, 5:20] = rng.integers(0, 65536, (20, 15))
    return values.astype(np.uint16)


def _rgb8(rng: np.random.Generator) -> np.ndarray:
    width, height = SIZE
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _alpha(rng: np.random.Generator) -> np.ndarray:
    """Alpha with fully transparent, fully opaque and partial pixels."""
    width, height = SIZE
    alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
    alpha[:20] = 0
    alpha[20:40] = 255
    return alpha


TIFF_ONLY = ("CMYK", "I", "F", "YCbCr")  # modes PNG cannot store


def _make(mode: str, folder: Path) -> tuple[Path, Image.Image]:
    """A crop file written in ``mode``, and a PIL image of it as a user would pass it."""
    rng = np.random.default_rng(sum(map(ord, mode)))
    width, height = SIZE
    if mode == "RGB48":  # 16 bits per channel PNG: PIL opens it as 8-bit RGB (high bytes)
        path = folder / "rgb48.png"
        samples = np.stack([_grey16(rng), _grey16(rng)[::-1], _grey16(rng)[:, ::-1]], axis=2)
        _write_png16(path, samples, color_type=2)
        return path, Image.open(path)
    if mode in ("I;16", "I;16B"):
        dtype, suffix = ("<u2", "png") if mode == "I;16" else (">u2", "tif")
        path = folder / f"grey16.{suffix}"
        Image.frombytes(mode, SIZE, _grey16(rng).astype(dtype).tobytes()).save(path)
        return path, Image.open(path)
    if mode == "PA":  # PIL writes PA to no format: the file is its lossless RGBA
        pa = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
        pa = pa.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        pa = pa.convert("PA")
        pa.putalpha(Image.fromarray(_alpha(rng), "L"))
        path = folder / "pa.png"
        pa.convert("RGBA").save(path)
        return path, pa
    rgb = _rgb8(rng)
    if mode == "RGBA":
        rgb[:20] = (250, 20, 200)  # a loud colour hidden under alpha 0
        image = Image.fromarray(np.dstack([rgb, _alpha(rng)]), "RGBA")
    elif mode == "LA":
        image = Image.fromarray(np.dstack([rgb[..., 0], _alpha(rng)]), "LA")
    elif mode == "P":  # a palette with a transparent entry
        image = Image.fromarray(rgb).quantize(colors=32)
        image.info["transparency"] = 3
    elif mode == "CMYK":
        k = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
        image = Image.fromarray(np.dstack([rgb, k]), "CMYK")
    elif mode == "1":
        image = Image.fromarray(rgb[..., 0] > 127)
    elif mode == "I":  # 32-bit grey (TIFF): 16-bit values, some above 65535 and below 0
        values = _grey16(rng).astype(np.int32)
        values[0, :4] = (70000, -5, 65535, 256)
        image = Image.fromarray(values, "I")
    elif mode == "F":  # 32-bit float grey (TIFF): 0..255 with fractions, some out of range
        values = rng.uniform(-20.0, 275.0, (height, width)).astype(np.float32)
        image = Image.fromarray(values, "F")
    elif mode == "YCbCr":
        image = Image.fromarray(rgb).convert("YCbCr")
    elif mode == "RGB":
        image = Image.fromarray(rgb)
    else:
        image = Image.fromarray(rgb[..., 0], "L")
    assert image.mode == mode
    path = folder / f"crop_{mode}.{'tif' if mode in TIFF_ONLY else 'png'}"
    image.save(path, **({"transparency": 3} if mode == "P" else {}))
    return path, Image.open(path)


MODES = ["RGB", "L", "I;16", "I;16B", "I", "F", "RGB48", "RGBA", "LA", "P", "PA", "CMYK",
         "YCbCr", "1"]
"""Every mode the reader fuzzer (test_fuzz_readers.SAVABLE) saves, plus 48-bit RGB and PA."""
OPENED_AS = {"RGB48": "RGB", "PA": "PA"}  # the mode of the PIL image the test passes


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> dict[str, tuple[Path, Image.Image]]:
    folder = tmp_path_factory.mktemp("modes")
    return {mode: _make(mode, folder) for mode in MODES}


def _pixels(path: Path) -> torch.Tensor:
    """The decoded file's RGB pixels as a uint8 (1, 3, H, W) tensor."""
    return torch.from_numpy(np.array(read_image(path))).permute(2, 0, 1)[None].contiguous()


@pytest.mark.parametrize("mode", MODES)
def test_path_pil_and_tensor_give_the_same_embedding(mode, crops, predictor):
    path, opened = crops[mode]
    assert opened.mode == OPENED_AS.get(mode, mode)
    assert np.array_equal(np.asarray(to_rgb(opened)), np.asarray(read_image(path)))
    x_path = predictor.preprocess([path])
    assert torch.equal(predictor.preprocess([opened]), x_path)
    assert torch.equal(predictor.preprocess(_pixels(path)), x_path)  # same PIL resize
    by_path = predictor.predict([path]).embeddings
    for other in (predictor.predict([opened]), predictor.predict(_pixels(path)),
                  predictor.predict([path, opened, str(path)])):
        assert np.abs(other.embeddings - by_path).max() <= EMBEDDING_ATOL, mode


def test_modes_cover_every_mode_the_reader_fuzzer_saves():
    from test_fuzz_readers import SAVABLE

    assert set(SAVABLE) <= set(MODES)


def test_32_bit_grey_decodes_to_hand_computed_pixels():
    """Known values, typed by hand: 32-bit integer grey keeps the high byte of 16 bits and
    saturates (70000 -> 255, -5 -> 0, 65535 -> 255, 256 -> 1); 32-bit float grey is taken as
    0..255, clipped and truncated (PIL's convert: 0.6 -> 0, 1.5 -> 1, 254.6 -> 254)."""
    ints = Image.fromarray(np.array([[70000, -5, 65535, 256, 30 * 256 + 255]], np.int32), "I")
    assert np.asarray(to_rgb(ints))[0].tolist() == [[v] * 3 for v in (255, 0, 255, 1, 30)]
    floats = np.array([[-3.2, 0.4, 0.6, 1.5, 2.5, 254.6, 300.0]], np.float32)
    expected = (0, 0, 0, 1, 2, 254, 255)
    assert np.asarray(to_rgb(Image.fromarray(floats, "F")))[0].tolist() == [[v] * 3 for v in expected]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "RGBA", "LA", "P", "PA"])
def test_the_crops_would_show_the_old_fault(mode, crops, predictor):
    """Guard on the test itself: PIL's plain convert("RGB"), which PIL inputs used to get,
    gives other pixels and another embedding for these crops."""
    path, opened = crops[mode]
    naive = opened.convert("RGB")
    assert not np.array_equal(np.asarray(naive), np.asarray(read_image(path)))
    if mode.startswith("I;16"):  # 30*256 and 160*256 both clipped to white
        assert np.asarray(naive)[30:].min() == 255 and np.asarray(read_image(path))[30:].min() < 35
    moved = np.abs(predictor.predict([naive]).embeddings - predictor.predict([path]).embeddings)
    assert moved.max() > 1000 * EMBEDDING_ATOL


def test_uint8_tensors_are_resized_like_files(crops, predictor):
    """Several crops in one uint8 batch equal the files one by one (no F.interpolate path)."""
    paths = [crops[m][0] for m in MODES]
    batch = torch.cat([_pixels(p) for p in paths])
    assert torch.equal(predictor.preprocess(batch), predictor.preprocess(paths))
    np.testing.assert_allclose(predictor.predict(batch).embeddings,
                               predictor.predict(paths).embeddings, rtol=0,
                               atol=EMBEDDING_ATOL)


@pytest.mark.parametrize("mode", ["I;16", "RGB48", "RGBA", "P", "CMYK"])
def test_search_by_pil_image_equals_search_by_path(mode, crops, search_index):
    require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")
    from attreid.search import GallerySearch

    search = GallerySearch.open(search_index)
    path, opened = crops[mode]
    by_path = search.by_image(path, k=8)
    by_pil = search.by_image(opened, k=8)
    assert [h.entry.id for h in by_pil] == [h.entry.id for h in by_path]
    np.testing.assert_allclose([h.distance for h in by_pil], [h.distance for h in by_path],
                               rtol=0, atol=EMBEDDING_ATOL)


def test_onnx_predictor_takes_the_same_path(crops, predictor, tiny_checkpoint, tmp_path):
    require("onnxruntime", "ONNX inference needs onnxruntime (pip install 'attreid[onnx]')")
    from attreid.inference.onnx import OnnxPredictor, export_onnx

    onnx = OnnxPredictor(export_onnx(tiny_checkpoint, tmp_path / "model.onnx"))
    paths = [crops[m][0] for m in MODES]
    opened = [crops[m][1] for m in MODES]
    expected = predictor.preprocess(paths).numpy()
    for images in (paths, opened, torch.cat([_pixels(p) for p in paths])):
        assert np.array_equal(onnx.preprocess(images), expected)
    np.testing.assert_allclose(onnx.predict(opened).embeddings, onnx.predict(paths).embeddings,
                               rtol=0, atol=EMBEDDING_ATOL)


def test_service_uploads_decode_like_files(crops):
    require("faiss", "the service needs faiss (pip install 'attreid[serve]')")
    from attreid.search.service import decode_upload

    for mode in ("I;16", "I;16B", "RGB48", "RGBA", "LA", "P", "CMYK", "1"):
        path = crops[mode][0]
        uploaded = decode_upload(path.read_bytes())
        assert np.array_equal(np.asarray(uploaded), np.asarray(read_image(path))), mode


# ---- to_rgb's values on hand-built images ----------------------------------------------------


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16B", ">u2"), ("I;16L", "<u2")])
def test_to_rgb_keeps_the_high_byte_of_16_bit_grey(mode, dtype):
    values = np.array([[0, 30 * 256, 160 * 256, 30 * 256 + 255, 65535]], dtype=dtype)
    image = Image.frombytes(mode, (5, 1), values.tobytes())
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (5, 1)
    assert np.asarray(out)[0].tolist() == [[v] * 3 for v in (0, 30, 160, 30, 255)]


def test_to_rgb_32_bit_grey_saturates():
    image = Image.fromarray(np.array([[-5, 30 * 256, 70000]], dtype=np.int32))
    assert image.mode == "I"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 30, 255]


def test_to_rgb_composites_alpha_on_black():
    rgba = np.array([[[200, 10, 0, 0], [100, 50, 20, 255], [100, 50, 20, 128]]], np.uint8)
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))[0].tolist()
    assert out == [[0, 0, 0], [100, 50, 20], [50, 25, 10]]  # 100*128/255 = 50.2 -> 50
    la = np.array([[[200, 0], [90, 255], [90, 128]]], np.uint8)
    assert np.asarray(to_rgb(Image.fromarray(la, "LA")))[0, :, 0].tolist() == [0, 90, 45]
    # premultiplied: the stored colour already is the composite on black
    pre = Image.frombytes("RGBa", (2, 1), bytes([100, 50, 20, 128, 0, 0, 0, 0]))
    assert np.asarray(to_rgb(pre))[0].tolist() == [[100, 50, 20], [0, 0, 0]]
    la_pre = Image.frombytes("La", (2, 1), bytes([45, 128, 0, 0]))
    assert np.asarray(to_rgb(la_pre))[0, :, 0].tolist() == [45, 0]


def test_to_rgb_palette_transparency_and_other_modes():
    palette = Image.new("P", (3, 1))
    palette.putpalette([250, 20, 200, 10, 20, 30] + [0] * 762)
    palette.putdata([0, 1, 0])
    palette.info["transparency"] = 0  # entry 0 (the loud colour) is transparent
    assert np.asarray(to_rgb(palette))[0].tolist() == [[0, 0, 0], [10, 20, 30], [0, 0, 0]]
    bilevel = Image.frombytes("1", (8, 1), bytes([0b10100000]))
    assert np.asarray(to_rgb(bilevel))[0, :3, 0].tolist() == [255, 0, 255]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]
    rgb = Image.new("RGB", (1, 1), (1, 2, 3))
    out = to_rgb(rgb)
    assert out is not rgb and np.asarray(out)[0, 0].tolist() == [1, 2, 3]


def test_48_bit_png_keeps_the_high_byte_by_path_and_by_pil(tmp_path):
    samples = np.zeros((2, 3, 3), np.uint16)
    samples[..., 0], samples[..., 1], samples[..., 2] = 30 * 256 + 200, 160 * 256 + 7, 65535
    path = tmp_path / "rgb48.png"
    _write_png16(path, samples, color_type=2)
    assert Image.open(path).mode == "RGB"
    for image in (read_image(path), to_rgb(Image.open(path))):
        assert np.asarray(image).reshape(-1, 3).tolist() == [[30, 160, 255]] * 6


# ---- clear errors for unsupported inputs -----------------------------------------------------


def test_unsupported_inputs_are_named(predictor, crops):
    path = crops["L"][0]
    with pytest.raises(ImageInputError, match=r"numpy array .* without its channel order: "
                       r".*channels=\"bgr\" for OpenCV"):
        predictor.predict([np.zeros((90, 37, 3), np.uint8)])
    with pytest.raises(ImageInputError, match="type builtins.bytes"):
        predictor.predict([path, path.read_bytes()])
    with pytest.raises(ImageInputError, match=r"got one PosixPath; pass \[image\]|got one "
                       r"WindowsPath"):
        predictor.predict(path)
    with pytest.raises(ImageInputError, match=r"got one str; pass \[image\]"):
        predictor.predict(str(path))
    with pytest.raises(ImageInputError, match="dtype torch.int64"):
        predictor.predict(_pixels(path).long())
    with pytest.raises(ImageInputError, match="got int"):
        predictor.predict(3)
    assert issubclass(ImageInputError, TypeError)
    # any iterable of images works, not only a list
    np.testing.assert_array_equal(predictor.predict(iter([path])).embeddings,
                                  predictor.predict([path]).embeddings)
