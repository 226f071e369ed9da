import numpy as np
import pytest
from PIL import Image

from bap.data import images
from bap.data.images import load_image_tensor
from bap.errors import InputError


def test_modes_become_rgb_unit_range(tmp_path):
    cases = {
        "gray.png": Image.fromarray(np.full((20, 30), 128, np.uint8), "L"),
        "rgba.png": Image.fromarray(np.full((20, 30, 4), 255, np.uint8), "RGBA"),
        "cmyk.jpg": Image.new("CMYK", (30, 20), (0, 255, 0, 0)),
        "pal.png": Image.new("P", (30, 20), 3),
        "tiny.png": Image.new("RGB", (1, 1), (255, 0, 0)),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        x = load_image_tensor(tmp_path / name, 32)
        assert x.shape == (3, 32, 32), name
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0, name
    x16 = np.full((20, 30), 65535, np.uint16)
    Image.fromarray(x16).save(tmp_path / "d16.png")
    x = load_image_tensor(tmp_path / "d16.png", 8)
    assert float(x.max()) == pytest.approx(1.0)


def test_bad_files_are_one_line_input_errors(tmp_path, monkeypatch):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        load_image_tensor(tmp_path / "text.png", 32)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image_tensor(tmp_path / "trunc.png", 32)
    with pytest.raises(InputError, match="not found"):
        load_image_tensor(tmp_path / "nope.png", 32)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(InputError, match=r"pixels|decompression-bomb"):
        load_image_tensor(tmp_path / "ok.png", 32)
