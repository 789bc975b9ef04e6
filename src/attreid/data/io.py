"""Small I/O helpers shared by the readers: image decoding (files, PIL images, pixel arrays; EXIF
orientation applied), CSV reading, folder listing (links followed, each real file once)."""

from __future__ import annotations

import csv
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attreid.data.records import DataError
from attreid.errors import AttreidError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


ALPHA_MODES = ("RGBA", "LA", "PA", "P", "RGBa", "La")
"""Modes composited on opaque black by :func:`to_rgb` (P: its palette or ``transparency`` may
hold alpha; RGBa and La: premultiplied)."""


class ImageInputError(AttreidError, TypeError):
    """An image input that no entry point decodes (e.g. bytes, or a numpy array without its
    channel order); the message names the type and the accepted ones."""


CHANNEL_ORDERS = ("rgb", "bgr")
"""Channel orders of pixel arrays: ``rgb`` (PIL, imageio, matplotlib, torchvision) and ``bgr``
(OpenCV: ``cv2.imread``, ``cv2.VideoCapture.read``)."""

ARRAY_ADVICE = (
    "say the channel order of numpy pixel arrays: channels=\"bgr\" for OpenCV frames "
    "(cv2.imread, cv2.VideoCapture), channels=\"rgb\" for RGB arrays (PIL, imageio, "
    "matplotlib); where no channels argument is taken, make a PIL image: "
    "PIL.Image.fromarray(frame[..., ::-1]) for a BGR frame, PIL.Image.fromarray(array) for RGB")
"""What to do with a numpy array given without its channel order (both cases named: an OpenCV
frame made a PIL image as if it were RGB swaps red and blue)."""

EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
"""EXIF orientation -> the transpose that makes the pixels upright (as PIL's
``ImageOps.exif_transpose``)."""


def read_image(path: Path | str) -> Image.Image:
    """Decode an image file fully and return it upright (EXIF orientation applied) as 8-bit RGB,
    converted by :func:`to_rgb`.

    ``read_image(path)`` equals ``to_rgb(Image.open(path))`` pixel for pixel. PIL's
    decompression-bomb check runs when the file is opened, before its pixels are decoded.

    Raises:
        DataError: the file is missing, empty, truncated or not an image; the message names it.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            struct.error) as exc:  # EOFError, struct.error: some PIL plugins on damaged files
        raise DataError(f"{path}: cannot decode image ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large ({exc})") from exc


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of ``image``: 1 (upright as stored) to 8; 1 where there is none, or
    the EXIF block cannot be read or holds another value (the pixels are then taken as stored)."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, KeyError, IndexError,
            TypeError):  # a damaged EXIF block: the pixels themselves decode
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (what a phone's viewer, a browser and
    ``cv2.imread`` show): the same pixels as ``PIL.ImageOps.exif_transpose``; ``image`` itself
    when the orientation is 1 or absent. A W x H image with orientation 5 to 8 gives H x W. The
    result carries no orientation, so turning it again (a decoded upload read once more) leaves
    it as it is."""
    method = _TRANSPOSE.get(exif_orientation(image))
    if method is None:
        return image
    turned = image.transpose(method)
    for key in ("exif", "xmp", "XML:com.adobe.xmp"):  # turned once: never again
        turned.info.pop(key, None)
    return turned


def to_rgb(image: Image.Image) -> Image.Image:
    """The one conversion of a decoded image to upright 8-bit RGB, used by every entry point
    that takes an image (files, PIL images, uploads; pixel arrays and uint8 tensors through
    :func:`from_array`), so they all give the same pixels.

    Returns a new RGB image (``image`` is not modified; a lazily opened one is loaded). First the
    EXIF orientation is applied (:func:`upright`: a phone photo stored sideways with orientation
    6 comes out as it is shown, W x H becoming H x W), then by mode:

    * ``RGB``: unchanged (a copy). PIL itself opens 16-bit-per-channel PNG (48-bit RGB, 64-bit
      RGBA, 16-bit grey+alpha) as 8-bit ``RGB``/``RGBA`` keeping the high byte of each sample,
      which is what the 16-bit grey rule below does too.
    * ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit grey, e.g. PNG and TIFF) and ``I``
      (32-bit integer grey): the high byte of 16 bits, ``value // 256`` (30*256 -> 30,
      65535 -> 255); above 65535 saturates at 255, below 0 at 0. PIL's ``convert("RGB")`` would
      clip at 255 and turn almost every 16-bit pixel white.
    * ``RGBA``, ``LA``, ``PA``, ``P`` (a palette, with or without ``transparency``) and the
      premultiplied ``RGBa``, ``La``: composited on opaque black, ``colour * alpha / 255``
      rounded, so a fully transparent pixel is black whatever colour it hides.
    * ``L``, ``1`` (0 -> 0, 1 -> 255), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: PIL's
      ``convert("RGB")`` (grey replicated to three channels; CMYK by PIL's plain formula).
    * ``F`` (32-bit float): PIL's ``convert("RGB")``, values taken as 0..255, clipped and
      truncated (0.6 -> 0, 254.6 -> 254, -3.2 -> 0, 300 -> 255).

    A multi-frame image gives its current frame, for a path and a PIL image alike. A colour-key
    ``transparency`` of an ``L`` or ``RGB`` image is ignored. A PIL image already turned upright
    by the caller must not keep its orientation tag (``ImageOps.exif_transpose`` removes it),
    else it is turned twice.
    """
    img = upright(image)
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16/32-bit grayscale: keep the high 8 of 16 bits (PIL's convert would clip at 255;
        # its point() does not take the big-endian I;16B of TIFF files). Above 65535 saturates.
        pixels = np.asarray(img).astype(np.int64)  # (H, W)
        img = Image.fromarray(np.clip(pixels // 256, 0, 255).astype(np.uint8))
    if img.mode == "La":  # premultiplied grey+alpha: PIL converts it to nothing else
        grey, alpha = img.split()
        img = Image.merge("RGBa", (grey, grey, grey, alpha))
    if img.mode in ALPHA_MODES:
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def check_channels(channels: str | None) -> str | None:
    """``channels`` lower-cased: ``"rgb"``, ``"bgr"`` or None (not said).

    Raises:
        ImageInputError: another value (the message lists the valid ones).
    """
    if channels is None:
        return None
    if not isinstance(channels, str) or channels.lower() not in CHANNEL_ORDERS:
        raise ImageInputError(f"channels={channels!r}: expected one of {CHANNEL_ORDERS} "
                              "(\"bgr\" for OpenCV frames, \"rgb\" for PIL/imageio arrays)")
    return channels.lower()


def from_array(array: np.ndarray, channels: str | None) -> Image.Image:
    """An RGB PIL image of pixels ``array`` (H, W, 3) uint8 whose channels are in the order
    ``channels`` (``"rgb"`` or ``"bgr"``, see :data:`CHANNEL_ORDERS`); a BGR frame has its
    channels reversed, so it gives the pixels of the same picture read from a file. Any strides
    (e.g. a crop ``frame[y0:y1, x0:x1]`` of an OpenCV frame) are taken; ``array`` is not modified.

    Raises:
        ImageInputError: ``channels`` is None or unknown (the message says which to pass for
            OpenCV and for RGB arrays), or ``array`` is not (H, W, 3) uint8 with H, W > 0.
    """
    order = check_channels(channels)
    if order is None:
        raise ImageInputError(f"numpy array {tuple(array.shape)} {array.dtype} without its "
                              f"channel order: {ARRAY_ADVICE}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ImageInputError(
            f"numpy array {tuple(array.shape)} {array.dtype}: expected pixels (H, W, 3) uint8 "
            "(grey: cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR); BGRA: cv2.cvtColor(frame, "
            "cv2.COLOR_BGRA2BGR); floats in 0..1: (array * 255).round().astype(numpy.uint8))")
    pixels = array[..., ::-1] if order == "bgr" else array
    return Image.fromarray(np.ascontiguousarray(pixels))


def load_rgb(image: object, channels: str | None = None) -> Image.Image:
    """A file path (``str`` or ``os.PathLike``) through :func:`read_image`, a PIL image through
    :func:`to_rgb` (the same RGB pixels for a file and for that file opened with PIL), or a
    numpy array (H, W, 3) uint8 of ``channels`` order through :func:`from_array`.

    Raises:
        ImageInputError: ``image`` is of another type, or a numpy array without ``channels``
            or not (H, W, 3) uint8 (the message names it and what to do).
        DataError: the file is missing or cannot be decoded, or a lazily opened PIL image
            cannot be decoded.
    """
    if isinstance(image, np.ndarray):
        return from_array(image, channels)
    if isinstance(image, Image.Image):
        try:
            return to_rgb(image)
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            name = getattr(image, "filename", "") or f"PIL image ({image.mode}, {image.size})"
            raise DataError(f"{name}: cannot decode image ({exc})") from exc
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    raise ImageInputError(
        f"unsupported image input of type {type(image).__module__}.{type(image).__qualname__}: "
        "expected a file path (str or os.PathLike), a PIL.Image.Image, a numpy array (H, W, 3) "
        "uint8 with its channel order (channels=\"bgr\" for OpenCV frames, \"rgb\" for RGB) or, "
        "for a batch of pixels, one uint8 torch.Tensor (N, 3, H, W)")


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """List a folder's image files (sorted) and its other files.

    Raises:
        DataError: the folder does not exist or is not a folder.
    """
    if not folder.exists():
        raise DataError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder, found a file")
    images, others = [], []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            continue
        (images if entry.suffix.lower() in IMAGE_SUFFIXES else others).append(entry)
    return images, others


@dataclass(frozen=True)
class FolderImages:
    """The image files under a folder, found by :func:`find_images`.

    Attributes:
        paths: real paths (links resolved, absolute), sorted, each file once.
        duplicates: (path as walked, the real path it repeats) for each further path that leads
            to a file already in ``paths`` (a file link, or a folder link into the tree).
        revisited: folders reached again (a link to a folder already walked, or a loop back to
            an ancestor), not walked again.
        broken: links (or vanished entries) with an image suffix that lead to no file.
        unreadable: ``"folder: reason"`` for folders that could not be listed.
    """

    paths: list[Path]
    duplicates: list[tuple[Path, Path]]
    revisited: list[Path]
    broken: list[Path]
    unreadable: list[str]

    def problems(self) -> str | None:
        """One line naming how many of each kind were met, with an example; None if none."""
        parts = []
        if self.duplicates:
            walked, real = self.duplicates[0]
            parts.append(f"{len(self.duplicates)} path(s) lead to a file already listed, "
                         f"taken once (e.g. {walked} is {real})")
        if self.revisited:
            parts.append(f"{len(self.revisited)} folder(s) reached a second time through a "
                         f"link, walked once (e.g. {self.revisited[0]})")
        if self.broken:
            parts.append(f"{len(self.broken)} broken link(s) skipped (e.g. {self.broken[0]})")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} folder(s) could not be read "
                         f"(e.g. {self.unreadable[0]})")
        return "; ".join(parts) or None


def find_images(folder: Path | str) -> FolderImages:
    """The image files (:data:`IMAGE_SUFFIXES`, by the name as walked) under ``folder``, at any
    depth, following links to folders and files: each real file once, each folder once.

    ``Path.rglob`` of Python 3.11 does not enter linked folders; here a linked camera folder is
    walked like any other. A folder is identified by (device, inode), so a link back to an
    ancestor or to a folder already walked is not walked again (no loop, no duplicates); files
    are identified by their real path, so a link to a crop already listed adds nothing. Both are
    reported in the result (see :meth:`FolderImages.problems`), never silently dropped.

    Raises:
        DataError: ``folder`` is missing or not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found" if not folder.exists()
                        else f"{folder}: expected a folder, found a file")
    seen_dirs = {_dir_key(folder)}
    first: dict[str, Path] = {}  # real path -> the path it was first met at
    duplicates: list[tuple[Path, Path]] = []
    revisited: list[Path] = []
    broken: list[Path] = []
    unreadable: list[str] = []
    for dirpath, dirnames, filenames in os.walk(
            folder, followlinks=True,
            onerror=lambda e: unreadable.append(f"{e.filename}: {e.strerror or e}")):
        dirnames[:] = _new_dirs(Path(dirpath), sorted(dirnames), seen_dirs, revisited)
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            walked = Path(dirpath, name)
            real = os.path.realpath(walked)
            if not os.path.isfile(real):
                broken.append(walked)
            elif real in first:
                duplicates.append((walked, Path(real)))
            else:
                first[real] = walked
    return FolderImages(sorted(Path(p) for p in first), duplicates, revisited, broken,
                        unreadable)


def _dir_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _new_dirs(parent: Path, names: list[str], seen: set[tuple[int, int] | None],
              revisited: list[Path]) -> list[str]:
    """The subfolders of ``parent`` not walked yet (marked walked now); the others noted."""
    keep = []
    for name in names:
        key = _dir_key(parent / name)
        if key is None:  # vanished since listed: os.walk would report it
            keep.append(name)
        elif key in seen:
            revisited.append(parent / name)
        else:
            seen.add(key)
            keep.append(name)
    return keep


def warn_ignored(folder: Path, others: list[Path]) -> None:
    """Emit one warning with a count for non-image files that a reader skips."""
    if others:
        names = ", ".join(p.name for p in others[:3]) + (" ..." if len(others) > 3 else "")
        warnings.warn(
            f"{folder}: ignored {len(others)} non-image file(s): {names}", stacklevel=3
        )


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV file with a header row.

    Returns:
        the header and the rows as dicts (values stripped).

    Raises:
        DataError: missing file, empty file, duplicate or empty column names, ragged rows.
    """
    header, rows = read_csv_lines(path)
    return header, [row for _, row in rows]


def read_csv_lines(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """:func:`read_csv` with the file line number of each row (blank lines and quoted line
    breaks counted), for error messages.

    Raises:
        DataError: as :func:`read_csv`.
    """
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines, end = [], 0
            for values in reader:  # a row starts on the line after the previous row ends
                lines.append((end + 1, values))
                end = reader.line_num
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot parse CSV ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    if not lines:
        raise DataError(f"{path}: empty CSV file, expected a header row")
    header = [h.strip() for h in lines[0][1]]
    if any(not h for h in header):
        raise DataError(f"{path}: empty column name in header {header}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate columns {dupes}")
    rows = []
    for lineno, values in lines[1:]:
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise DataError(
                f"{path}, line {lineno}: {len(values)} values, expected {len(header)} "
                f"(one per column of the header)"
            )
        rows.append((lineno, {h: v.strip() for h, v in zip(header, values)}))
    return header, rows


_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


def parse_int(value: str, where: str, what: str) -> int:
    """Parse an integer cell (ASCII digits, optional sign), raising a DataError naming the place
    and the value. Python's int() would also take "1_000", "١" or 5,000 digits (ValueError)."""
    if _INTEGER.fullmatch(value.strip()) is None:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise DataError(f"{where}: {what} {shown!r} is not an integer")
    return int(value)
