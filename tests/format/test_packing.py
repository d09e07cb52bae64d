"""int4 nibble packing: exact round trip and the documented byte layout."""
from __future__ import annotations

import pytest
import torch

from quiktool.format.packing import pack_int4, pad_columns, unpack_int4


@pytest.mark.parametrize("N,K", [(1, 1), (3, 171), (118, 172), (1, 64), (5, 2), (7, 3)])
def test_roundtrip_random_codes(N, K):
    g = torch.Generator().manual_seed(N * 1000 + K)
    codes = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (N, (K + 1) // 2)
    assert packed.is_contiguous()
    assert torch.equal(unpack_int4(packed, K), codes)


def test_all_values_roundtrip():
    codes = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 1)  # every code in every nibble position
    codes[1] = codes[1].flip(0)
    assert torch.equal(unpack_int4(pack_int4(codes), 16), codes)


def test_byte_layout_low_nibble_is_even_column():
    codes = torch.tensor([[1, 2, -1, 7, -8, 3, 5]], dtype=torch.int8)
    # byte i = (col 2i & 0xF) | (col 2i+1 & 0xF) << 4, two's complement nibbles; odd K padded with 0
    expected = [0x21, 0x7F, 0x38, 0x05]
    assert pack_int4(codes).tolist() == [expected]
    two = torch.tensor([[-2, 0], [0, -2]], dtype=torch.int8)
    assert pack_int4(two).tolist() == [[0x0E], [0xE0]]


def test_unpack_handmade_bytes():
    packed = torch.tensor([[0x8F, 0x70]], dtype=torch.uint8)
    assert unpack_int4(packed, 4).tolist() == [[-1, -8, 0, 7]]
    assert unpack_int4(packed, 3).tolist() == [[-1, -8, 0]]


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([[8]], dtype=torch.int8))
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([[-9]], dtype=torch.int8))
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([[1, 2]], dtype=torch.int32))
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([1, 2], dtype=torch.int8))
    with pytest.raises(ValueError):
        unpack_int4(torch.zeros(2, 3, dtype=torch.uint8), 7)  # 7 codes need 4 bytes
    with pytest.raises(ValueError):
        unpack_int4(torch.zeros(2, 3, dtype=torch.int8), 6)


def test_pad_columns():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(-8, 8, (3, 171), generator=g, dtype=torch.int8)
    p = pad_columns(t, 192)
    assert p.shape == (3, 192) and p.dtype == torch.int8
    assert torch.equal(p[:, :171], t) and bool((p[:, 171:] == 0).all())
    assert torch.equal(pad_columns(t, 171), t)
