"""Image loading and input checks shared by every backbone."""

from __future__ import annotations

import pytest
from PIL import Image

from trace_core.records import MAX_IMAGE_SIDE, Candidate, InputError, Query, load_image


def test_transparent_pixels_become_white_not_their_stored_colour(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent, stored colour black
    img.putpixel((0, 0), (255, 0, 0, 255))
    path = tmp_path / "t.png"
    img.save(path)
    out = load_image(str(path))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (255, 0, 0)
    grey = load_image(Image.new("L", (3, 3), 7))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (7, 7, 7)


def test_large_images_are_downscaled_and_absurd_ones_refused(tmp_path):
    big = load_image(Image.new("RGB", (4000, 1000)))
    assert max(big.size) == MAX_IMAGE_SIDE and big.size[1] == MAX_IMAGE_SIDE // 4
    with pytest.raises(InputError, match="too large"):
        load_image(Image.new("1", (9000, 9000)))


def test_bad_files_and_empty_inputs(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="cannot read image"):
        load_image(str(tmp_path / "x.png"))
    with pytest.raises(InputError, match="not found"):
        load_image(str(tmp_path / "nope.png"))
    with pytest.raises(InputError, match="empty"):
        Query(text=" ", instruction="x").validate()
    assert Candidate(text="a", image=Image.new("RGB", (2, 2))).modality == "image,text"
