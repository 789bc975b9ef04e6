"""Every way into the model sees the picture a person sees (issue 29, items 3, 4 and 6).

* Links: a gallery's linked camera folder is walked (``Path.rglob`` of Python 3.11 skipped it:
  15 of 33 crops indexed), a link to a crop already listed is taken once and reported (it used to
  abort the build with a raw ``IntegrityError`` after every crop was embedded), and a link back
  to an ancestor does not loop.
* EXIF orientation: a photo stored sideways with orientation 6 is decoded upright, by path, as a
  PIL image and as an upload, so it embeds as the upright original (it used to embed sideways:
  distance 0.659 to the original on the real model).
* Pixel arrays: a numpy array needs its channel order; an OpenCV (BGR) frame with
  ``channels="bgr"`` embeds as the picture it shows (the old advice, ``PIL.Image.fromarray``,
  swapped red and blue: embeddings moved by a median 0.54).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require
from PIL import Image, ImageOps

from attreid.data.io import (
    EXIF_ORIENTATION,
    ImageInputError,
    exif_orientation,
    find_images,
    from_array,
    read_image,
    to_rgb,
)
from attreid.data.records import DataError
from attreid.inference.predictor import Predictor

EMBEDDING_ATOL = 1e-6
"""Inputs that reach the model as the same float tensor (asserted with torch.equal) give the same
embedding on a deterministic CPU forward (measured difference 0.0); 1e-6 leaves room only for a
backend's reduction order."""
MOVED = 1e-3
"""What a wrong decoding (sideways, or red and blue swapped) must move an embedding by at least,
per component, on the tiny checkpoint; measured: 0.14 for the sideways crop (L2 0.58, norm 0.92),
0.058 for the BGR crop taken as RGB (at least 0.028 over 40 synthetic crops, median 0.09), so the
guard cannot pass by luck."""

SIZE = (37, 90)  # (width, height): not square, not the model's 64x128


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint, device="cpu")


def _upright(seed: int = 3) -> Image.Image:
    """A crop whose top, bottom, left, right and colours all differ (every turn shows)."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[:20] = (220, 30, 40)  # red head
    pixels[-25:, :10] = (20, 40, 230)  # blue bottom-left foot
    return Image.fromarray(pixels)


_UNDO = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
         6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_270}
"""Orientation -> how a camera stores an upright picture under it (the inverse of the turn that
shows it: orientation 6 is 'rotate 90 clockwise to show', so the stored pixels are turned 90
counter-clockwise)."""


def _stored(upright: Image.Image, orientation: int, path: Path, **save: object) -> Path:
    """``upright`` saved as a camera stores it with EXIF ``orientation``."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    upright.transpose(_UNDO[orientation]).save(path, exif=exif, **save)
    return path


# ---- item 4: EXIF orientation -----------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(2, 9))
def test_every_orientation_decodes_upright(orientation, tmp_path):
    upright = _upright()
    path = _stored(upright, orientation, tmp_path / f"o{orientation}.png")
    with Image.open(path) as raw:
        assert exif_orientation(raw) == orientation
        assert raw.size != upright.size or orientation in (2, 3, 4)  # stored turned
        pil_reference = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    decoded = np.asarray(read_image(path))
    assert np.array_equal(decoded, np.asarray(upright))  # lossless PNG: the very pixels
    assert np.array_equal(decoded, pil_reference)  # and what PIL's exif_transpose gives
    assert np.array_equal(np.asarray(to_rgb(Image.open(path))), decoded)


def test_sideways_phone_photo_embeds_as_the_upright_original(predictor, tmp_path):
    upright = _upright()
    original = tmp_path / "upright.png"
    upright.save(original)
    sideways = _stored(upright, 6, tmp_path / "phone.png")
    by_original = predictor.predict([original]).embeddings
    x = predictor.preprocess([original])
    assert torch.equal(predictor.preprocess([sideways]), x)
    assert torch.equal(predictor.preprocess([Image.open(sideways)]), x)
    for images in ([sideways], [Image.open(sideways)], [str(sideways)]):
        np.testing.assert_allclose(predictor.predict(images).embeddings, by_original,
                                   rtol=0, atol=EMBEDDING_ATOL)
    # guard on the test: the stored pixels, orientation ignored (the old decoding), embed apart
    as_stored = Image.open(sideways).convert("RGB")
    as_stored.info.pop("exif", None)
    as_stored.getexif().clear()
    moved = np.abs(predictor.predict([as_stored]).embeddings - by_original).max()
    assert moved > MOVED


def test_jpeg_orientation_6_decodes_as_pil_exif_transpose(tmp_path):
    """A phone photo is a JPEG: its decoded pixels equal PIL's exif_transpose exactly and the
    upright picture within JPEG's loss (sideways they would differ everywhere)."""
    upright = _upright().resize((74, 180))
    path = _stored(upright, 6, tmp_path / "phone.jpg", quality=95)
    decoded = read_image(path)
    with Image.open(path) as raw:
        assert raw.size == (180, 74)
        assert np.array_equal(np.asarray(decoded), np.asarray(ImageOps.exif_transpose(raw)))
    assert decoded.size == upright.size
    error = np.abs(np.asarray(decoded, np.int16) - np.asarray(upright, np.int16))
    assert np.median(error) < 10


def test_uploads_decode_orientation_like_files(tmp_path):
    require("faiss", "the service needs faiss (pip install 'attreid[serve]')")
    from attreid.search.http import decode_upload
    from attreid.search.query import QueryError

    upright = _upright()
    path = _stored(upright, 6, tmp_path / "phone.png")
    assert np.array_equal(np.asarray(decode_upload(path.read_bytes())), np.asarray(upright))
    # the pixel limit still refuses before decoding, whatever the orientation
    with pytest.raises(QueryError, match="at most 100 allowed"):
        decode_upload(path.read_bytes(), max_pixels=100)


def test_an_image_turned_upright_is_not_turned_again(tmp_path, predictor):
    """The replay of issue 29 found uploads and indexed crops still sideways: the decoded image
    kept its orientation tag and the next conversion (the predictor's) turned it once more."""
    from attreid.data.io import to_rgb

    upright = _upright()
    for suffix in ("png", "jpg"):
        path = _stored(upright, 6, tmp_path / f"phone.{suffix}")
        once = read_image(path)
        assert once.size == upright.size
        assert np.array_equal(np.asarray(to_rgb(once)), np.asarray(once))  # never twice
    path = _stored(upright, 6, tmp_path / "phone2.png")
    a = predictor.predict([read_image(path)]).embeddings
    b = predictor.predict([upright]).embeddings
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_decompression_bomb_check_still_comes_first(tmp_path, monkeypatch):
    path = _stored(_upright(), 6, tmp_path / "phone.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 37 x 90 = 3330 > 2 x 500
    with pytest.raises(DataError, match="phone.png: image too large"):
        read_image(path)


def test_damaged_exif_is_read_as_no_orientation(tmp_path):
    """An EXIF block that cannot be parsed leaves the pixels as stored (never an error)."""
    upright = _upright()
    path = tmp_path / "damaged.jpg"
    junk = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\xff\xff"
    upright.save(path, exif=junk, quality=95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's own "Corrupt EXIF data" warning
        with Image.open(path) as raw:
            assert exif_orientation(raw) == 1
            expected = np.asarray(raw.convert("RGB"))
        decoded = read_image(path)
    assert np.array_equal(np.asarray(decoded), expected) and decoded.size == upright.size


# ---- item 6: pixel arrays with their channel order -------------------------------------------


@pytest.fixture(scope="module")
def crop(synth_market) -> tuple[Path, Image.Image]:
    """A synthetic pedestrian crop (coloured clothes) and its decoded RGB pixels."""
    path = sorted((synth_market / "bounding_box_test").glob("*.jpg"))[0]
    return path, read_image(path)


def test_opencv_frame_with_bgr_embeds_as_the_picture(predictor, crop):
    path, image = crop
    rgb = np.asarray(image)
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # what cv2.imread gives for this file
    by_pil = predictor.predict([image]).embeddings
    x = predictor.preprocess([image])
    assert torch.equal(predictor.preprocess([bgr], channels="bgr"), x)
    assert torch.equal(predictor.preprocess([rgb], channels="rgb"), x)
    for images, channels in (([bgr], "bgr"), ([bgr], "BGR"), ([rgb], "rgb"),
                             ([path, bgr], "bgr"), (np.stack([bgr, bgr]), "bgr")):
        got = predictor.predict(images, channels=channels).embeddings
        np.testing.assert_allclose(got, np.repeat(by_pil, len(got), axis=0), rtol=0,
                                   atol=EMBEDDING_ATOL)
    # the same BGR frame taken as RGB (the old advice, PIL.Image.fromarray) is another person
    swapped = predictor.predict([bgr], channels="rgb").embeddings
    assert np.abs(swapped - by_pil).max() > MOVED
    np.testing.assert_allclose(predictor.predict([Image.fromarray(bgr)]).embeddings, swapped,
                               rtol=0, atol=EMBEDDING_ATOL)


def test_a_crop_view_of_a_frame_is_taken_with_its_strides(predictor, crop):
    """A footage crop is a view ``frame[y0:y1, x0:x1]`` (not contiguous)."""
    _, image = crop
    rgb = np.asarray(image)
    height, width = rgb.shape[:2]
    frame = np.zeros((height + 30, width + 50, 3), np.uint8)
    frame[10:10 + height, 20:20 + width] = rgb[..., ::-1]
    view = frame[10:10 + height, 20:20 + width]
    assert not view.flags["C_CONTIGUOUS"]
    before = frame.copy()
    assert np.array_equal(np.asarray(from_array(view, "bgr")), rgb)
    assert np.array_equal(frame, before)  # the caller's frame is not touched
    np.testing.assert_allclose(predictor.predict([view], channels="bgr").embeddings,
                               predictor.predict([image]).embeddings, rtol=0,
                               atol=EMBEDDING_ATOL)


def test_opencv_imread_with_bgr_equals_the_path(predictor, tmp_path):
    """With OpenCV itself (an optional tool, not a dependency): cv2.imread of a PNG plus
    channels="bgr" is the path's embedding; cv2.imread applies EXIF orientation too."""
    from conftest import require

    cv2 = require("cv2", "OpenCV (the footage extra)")
    upright = _upright()
    path = tmp_path / "crop.png"
    upright.save(path)
    sideways = _stored(upright, 6, tmp_path / "phone.jpg", quality=95)
    frame = cv2.imread(str(path))
    np.testing.assert_allclose(predictor.predict([frame], channels="bgr").embeddings,
                               predictor.predict([path]).embeddings, rtol=0,
                               atol=EMBEDDING_ATOL)
    assert np.array_equal(np.asarray(from_array(cv2.imread(str(sideways)), "bgr")),
                          np.asarray(read_image(sideways)))


def test_uint8_tensor_takes_bgr_too(predictor, crop):
    _, image = crop
    rgb = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].contiguous()  # (1, 3, H, W)
    x = predictor.preprocess([image])
    assert torch.equal(predictor.preprocess(rgb), x)  # RGB unless said otherwise, as before
    assert torch.equal(predictor.preprocess(rgb.flip(1), channels="bgr"), x)
    with pytest.raises(ImageInputError, match="float tensor"):
        predictor.predict(x, channels="bgr")


def test_an_array_without_channels_is_refused_naming_both_cases(predictor, crop):
    _, image = crop
    frame = np.asarray(image)[..., ::-1]
    with pytest.raises(ImageInputError) as caught:
        predictor.predict([frame])
    message = str(caught.value)
    for needed in ('channels="bgr"', "OpenCV", "cv2.imread", "VideoCapture", 'channels="rgb"',
                   "PIL", "imageio", "fromarray(frame[..., ::-1])", str(frame.shape)):
        assert needed in message, needed
    with pytest.raises(ImageInputError, match=r"channels='BRG': expected one of \('rgb', "
                                              r"'bgr'\)"):
        predictor.predict([frame], channels="BRG")
    with pytest.raises(ImageInputError, match=r"channels='BRG'"):
        predictor.predict([Path("never/read.jpg")], channels="BRG")  # checked before decoding
    with pytest.raises(ImageInputError, match=r"one numpy array \(\d+, \d+, 3\); pass \[frame\]"):
        predictor.predict(frame, channels="bgr")


@pytest.mark.parametrize("array", [np.zeros((90, 37, 4), np.uint8), np.zeros((90, 37), np.uint8),
                                   np.zeros((90, 37, 3), np.float32), np.zeros((0, 37, 3), np.uint8),
                                   np.zeros((3, 90, 37), np.uint8)])
def test_arrays_not_shaped_as_pixels_are_refused(predictor, array):
    with pytest.raises(ImageInputError, match=r"expected pixels \(H, W, 3\) uint8"):
        predictor.predict([array], channels="bgr")


def test_onnx_predictor_takes_arrays_the_same_way(predictor, crop, tiny_checkpoint, tmp_path):
    require("onnxruntime", "ONNX inference needs onnxruntime (pip install 'attreid[onnx]')")
    from attreid.inference.onnx import OnnxPredictor, export_onnx

    onnx = OnnxPredictor(export_onnx(tiny_checkpoint, tmp_path / "model.onnx"))
    path, image = crop
    bgr = np.asarray(image)[..., ::-1]
    assert np.array_equal(onnx.preprocess([bgr], channels="bgr"), onnx.preprocess([path]))
    np.testing.assert_allclose(onnx.predict([bgr], channels="bgr").embeddings,
                               onnx.predict([path]).embeddings, rtol=0, atol=EMBEDDING_ATOL)
    with pytest.raises(ImageInputError, match='channels="bgr"'):
        onnx.predict([bgr])


# ---- item 3: links in a gallery folder -------------------------------------------------------


def _gallery(root: Path, synth_market: Path) -> tuple[Path, set[Path]]:
    """``root/gallery`` with cam1 (3 crops), cam2 a link to a folder outside (2 crops), a file
    link to a cam1 crop, a link back to the gallery (a loop), a second link to cam2's target,
    and a broken link; and the real paths of the 5 distinct crops."""
    crops = sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:5]
    gallery, outside = root / "gallery", root / "elsewhere" / "cam2"
    (gallery / "cam1").mkdir(parents=True)
    outside.mkdir(parents=True)
    for src in crops[:3]:
        shutil.copy(src, gallery / "cam1" / src.name)
    for src in crops[3:]:
        shutil.copy(src, outside / src.name)
    os.symlink(outside, gallery / "cam2")
    os.symlink(outside, gallery / "cam2_again")
    os.symlink(gallery / "cam1" / crops[0].name, gallery / "cam1" / "same_person.jpg")
    os.symlink(gallery, gallery / "cam1" / "loop")
    os.symlink(root / "nothing.jpg", gallery / "broken.jpg")
    real = {Path(os.path.realpath(gallery / "cam1" / c.name)) for c in crops[:3]}
    real |= {Path(os.path.realpath(outside / c.name)) for c in crops[3:]}
    return gallery, real


def test_find_images_follows_links_once(synth_market, tmp_path):
    gallery, real = _gallery(tmp_path, synth_market)
    rglob = [p for p in gallery.rglob("*.jpg") if p.is_file()]
    assert len(rglob) == 4  # the old listing: cam1 and its file link, nothing of cam2
    found = find_images(gallery)
    assert found.paths == sorted(real)  # every distinct crop, once, by real path
    assert [walked.name for walked, _ in found.duplicates] == ["same_person.jpg"]
    assert {p.name for p in found.revisited} == {"cam2_again", "loop"}
    assert [p.name for p in found.broken] == ["broken.jpg"]
    problems = found.problems()
    assert "1 path(s) lead to a file already listed" in problems
    assert "2 folder(s) reached a second time" in problems
    assert "1 broken link(s)" in problems


def test_list_gallery_warns_once_and_never_repeats_a_path(synth_market, tmp_path):
    from attreid.search.build import list_gallery

    gallery, real = _gallery(tmp_path, synth_market)
    with pytest.warns(UserWarning) as caught:
        paths = list_gallery(gallery)
    assert paths == sorted(real) and len(set(paths)) == len(paths) == 5
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "same_person.jpg is" in messages[0]


def test_build_index_on_a_linked_gallery_indexes_each_crop_once(predictor, synth_market,
                                                                tmp_path):
    require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")
    from attreid.search.build import add_images, build_index

    gallery, real = _gallery(tmp_path, synth_market)
    with pytest.warns(UserWarning, match="lead to a file already listed"):
        index = build_index(predictor, gallery, tmp_path / "index")
    assert len(index) == 5
    assert index.indexed_paths() == {str(p) for p in real}
    with pytest.warns(UserWarning, match="lead to a file already listed"):
        assert add_images(index, predictor, gallery)[:2] == (0, 5)


def test_custom_reader_sees_unlisted_crops_in_linked_folders(tmp_path, recwarn):
    from attreid.data.custom import _warn_unlisted

    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    (root / "cam1").mkdir(parents=True)
    outside.mkdir()
    _upright().save(root / "cam1" / "a.png")
    _upright(4).save(outside / "b.png")
    os.symlink(outside, root / "cam2")
    os.symlink(root / "cam1" / "a.png", root / "cam1" / "a_again.png")
    _warn_unlisted(root, {root / "cam1" / "a.png"})
    messages = [str(w.message) for w in recwarn]
    assert len(messages) == 1 and "1 image(s) not listed" in messages[0]
    assert "b.png" in messages[0]
