"""nanocodec.pictures.tile: where each image lands, the gaps, the background, and the cell rule."""
import numpy as np
import pytest
from PIL import Image

from nanocodec.pictures import tile


def solid(w: int, h: int, value: int, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (w, h), value if mode == "L" else (value, value, value))


def test_images_fill_rows_left_to_right_with_gaps_of_background():
    images = [solid(4, 3, 10 * (i + 1)) for i in range(5)]
    sheet = np.asarray(tile(images, cols=3, gap=2, background=(200, 100, 0)))
    assert sheet.shape == (2 * 3 + 2, 3 * 4 + 2 * 2, 3)
    for i in range(5):
        top, left = (i // 3) * 5, (i % 3) * 6
        assert (sheet[top:top + 3, left:left + 4] == 10 * (i + 1)).all()
    assert (sheet[3:5] == (200, 100, 0)).all() and (sheet[:, 4:6] == (200, 100, 0)).all()
    assert (sheet[5:, 12:] == (200, 100, 0)).all()  # the empty sixth cell


def test_columns_are_clamped_to_the_images():
    assert tile([solid(4, 4, 0)] * 3, cols=10, gap=1).size == (3 * 4 + 2, 4)
    assert tile([solid(4, 4, 0)] * 3, cols=0, gap=1).size == (4, 3 * 4 + 2)


def test_without_a_cell_images_keep_their_size_at_the_top_left():
    sheet = np.asarray(tile([solid(2, 5, 50), solid(6, 1, 90, "L")], cols=2, gap=0, background=(7, 7, 7)))
    assert sheet.shape == (5, 12, 3)
    assert (sheet[:, :2] == 50).all() and (sheet[:, 2:6] == 7).all()
    assert (sheet[0, 6:] == 90).all() and (sheet[1:, 6:] == 7).all()


def test_a_cell_resizes_every_image():
    sheet = tile([solid(2, 2, 30), solid(8, 3, 60)], cols=1, gap=0, cell=(5, 4))
    assert sheet.size == (5, 8) and (np.asarray(sheet)[4:] == 60).all()


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        tile([], cols=2)
