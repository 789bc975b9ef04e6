"""Small I/O helpers shared by the readers: image decoding, CSV reading, folder listing."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from attreid.data.records import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_image(path: Path | str) -> Image.Image:
    """Decode an image file fully and return it as RGB.

    Grayscale, palette, RGBA, CMYK and 16-bit images are converted to 8-bit RGB.

    Raises:
        DataError: the file is missing, empty, truncated or not an image; the message names it.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large ({exc})") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits before the RGB conversion (PIL would clip).
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


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
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot parse CSV ({exc})") from exc
    if not lines:
        raise DataError(f"{path}: empty CSV file, expected a header row")
    header = [h.strip() for h in lines[0]]
    if any(not h for h in header):
        raise DataError(f"{path}: empty column name in header {header}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate columns {dupes}")
    rows = []
    for lineno, values in enumerate(lines[1:], start=2):
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise DataError(
                f"{path}, line {lineno}: {len(values)} values, expected {len(header)} "
                f"(one per column of the header)"
            )
        rows.append({h: v.strip() for h, v in zip(header, values)})
    return header, rows


def parse_int(value: str, where: str, what: str) -> int:
    """Parse an integer cell, raising a DataError naming the place and the value."""
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: {what} {value!r} is not an integer") from None
