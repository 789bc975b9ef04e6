"""Small I/O helpers shared by the readers: image decoding, CSV reading, folder listing."""

from __future__ import annotations

import csv
import os
import re
import struct
import warnings
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
    """An image input of a type that no entry point decodes (e.g. a numpy array or bytes); the
    message names the type and the accepted ones."""


def read_image(path: Path | str) -> Image.Image:
    """Decode an image file fully and return it as 8-bit RGB, converted by :func:`to_rgb`.

    ``read_image(path)`` equals ``to_rgb(Image.open(path))`` pixel for pixel.

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


def to_rgb(image: Image.Image) -> Image.Image:
    """The one conversion of a decoded image to 8-bit RGB, used by every entry point that takes
    an image (files, PIL images, uploads, uint8 tensors), so they all give the same pixels.

    Returns a new RGB image of the same size (``image`` is not modified; a lazily opened one is
    loaded). By mode:

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

    EXIF orientation is not applied and a multi-frame image gives its current frame, for a path
    and a PIL image alike. A colour-key ``transparency`` of an ``L`` or ``RGB`` image is ignored.
    """
    img = image
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


def load_rgb(image: object) -> Image.Image:
    """A file path (``str`` or ``os.PathLike``) through :func:`read_image`, or a PIL image
    through :func:`to_rgb`: the same RGB pixels for a file and for that file opened with PIL.

    Raises:
        ImageInputError: ``image`` is of another type (the message names it).
        DataError: the file is missing or cannot be decoded, or a lazily opened PIL image
            cannot be decoded.
    """
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
        "expected a file path (str or os.PathLike) or a PIL.Image.Image (a numpy array: "
        "PIL.Image.fromarray(array); a batch of pixels: one uint8 torch.Tensor (N, 3, H, W))")


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
