"""``python -m attreid.train`` = ``attreid train``: the entry point torchrun starts once per rank,
e.g. ``torchrun --nproc_per_node 2 -m attreid.train --config cpu --data DIR --out runs/ddp``."""

from __future__ import annotations

import sys

from attreid.cli import run


def main(argv: list[str] | None = None) -> None:
    run(["train", *(sys.argv[1:] if argv is None else argv)], prog_name="attreid train")


if __name__ == "__main__":
    main()
