"""``python -m attreid.cli ARGS`` = ``attreid ARGS``. torchrun starts ``-m attreid.cli train``
once per rank, e.g. ``torchrun --nproc_per_node 2 -m attreid.cli train --config cpu --data DIR
--out runs/ddp``."""

from __future__ import annotations

from attreid.cli import main

if __name__ == "__main__":
    main()
