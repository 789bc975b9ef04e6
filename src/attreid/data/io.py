"""Small I/O helpers shared by the readers: image decoding, CSV reading, folder listing."""

from __future__ import annotations

import csv
import re
import struct
import warnings
from pathlib import Path

import numpy as np
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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            struct.error) as exc:  # EOFError, struct.error: some PIL plugins on damaged files
        raise DataError(f"{path}: cannot decode image ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large ({exc})") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16/32-bit grayscale: keep the high 8 of 16 bits (PIL's convert would clip at 255;
        # its point() does not take the big-endian I;16B of TIFF files). Above 65535 saturates.
        pixels = np.asarray(img).astype(np.int64)  # (H, W)
        img = Image.fromarray(np.clip(pixels // 256, 0, 255).astype(np.uint8))
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
