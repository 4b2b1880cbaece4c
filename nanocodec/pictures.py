"""Pictures people look at: images laid out on one sheet.

Owns `tile`, the one layout behind sample grids (sample.py, train.py's sample picture), video
filmstrips (nanocodec.avc.filmstrip) and the demo contact sheet (python -m nanocodec.demo).
Does not own decoding (nanocodec.jpeg, nanocodec.avc) or where a sheet is saved.
"""
from __future__ import annotations

from collections.abc import Sequence

from PIL import Image


def tile(images: Sequence[Image.Image], cols: int, gap: int = 2,
         background: tuple[int, int, int] = (255, 255, 255),
         cell: tuple[int, int] | None = None) -> Image.Image:
    """An RGB sheet of `images`, left to right and top to bottom, `cols` per row (at most one row
    of all of them), `gap` pixels of `background` between neighbours and none around the edge.

    With `cell` every image is resized to that (width, height); without it the cell is the widest
    and tallest image and each image sits at its cell's top-left corner.
    """
    if not images:
        raise ValueError("tile: no images to lay out")
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    width, height = cell or (max(im.width for im in images), max(im.height for im in images))
    sheet = Image.new("RGB", (cols * (width + gap) - gap, rows * (height + gap) - gap), background)
    for i, im in enumerate(images):
        corner = ((i % cols) * (width + gap), (i // cols) * (height + gap))
        sheet.paste(im.resize(cell) if cell else im, corner)
    return sheet
