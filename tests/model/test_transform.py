"""Keep-ratio resize, flip and padding used by the loader and the model."""

import pytest
import torch

from xscreen.model.transform import fit_size, hflip, normalize, pad_batch, resize_to_fit


def test_fit_size_short_side_or_long_side_limits():
    assert fit_size(400, 600) == (800, 1200)  # short side reaches 800, long side 1200 <= 1333
    assert fit_size(500, 1500) == (444, 1333)  # long side would be 2400: capped at 1333
    assert fit_size(1000, 1000, 320, 320) == (320, 320)
    with pytest.raises(ValueError):
        fit_size(0, 10)


def test_resize_scales_boxes_and_is_idempotent():
    img = torch.rand(3, 400, 600) * 255
    boxes = torch.tensor([[10.0, 20.0, 110.0, 220.0]])
    out, b = resize_to_fit(img, boxes)
    assert out.shape == (3, 800, 1200)
    assert torch.allclose(b, torch.tensor([[20.0, 40.0, 220.0, 440.0]]))
    again, b2 = resize_to_fit(out, b)
    assert again is out and b2 is b


def test_hflip_boxes_and_pixels():
    img = torch.arange(2 * 5, dtype=torch.float32).view(1, 2, 5).repeat(3, 1, 1)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
    f, fb = hflip(img, boxes)
    assert torch.equal(f[0, 0], torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]))
    assert torch.equal(fb, torch.tensor([[3.0, 0.0, 5.0, 1.0]]))
    ff, fbb = hflip(f, fb)
    assert torch.equal(ff, img) and torch.equal(fbb, boxes)


def test_pad_batch_to_multiple_of_32_and_normalize():
    a, b = torch.ones(3, 33, 40), torch.ones(3, 64, 20)
    batch, sizes = pad_batch([a, b])
    assert batch.shape == (2, 3, 64, 64)
    assert sizes == [(33, 40), (64, 20)]
    assert batch[0, :, 33:].abs().sum() == 0 and batch[1, :, :, 20:].abs().sum() == 0
    n = normalize(torch.full((3, 2, 2), 123.675))
    assert torch.allclose(n[0], torch.zeros(2, 2), atol=1e-5)
