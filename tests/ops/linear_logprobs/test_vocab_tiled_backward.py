"""The vocabulary-tiled chunked backward (chunked.backward, docs/math.md §6) against the fp64 naive gradients.

Each case forces tiles narrower than the vocabulary (vocab_tile) so the vocab_shard epilogue with tile-local
target ids runs on every tile, with a tail tile (V not a multiple of the tile), ignored rows, bias,
temperature != 1, entropy gradient on and off, one token, several row blocks, and a vocabulary shard.
"""

import pytest
import torch

from gro_kernels.ops.common import tiled_grads
from gro_kernels.ops.linear_logprobs import chunked
from gro_kernels.ops.linear_logprobs.vocab_parallel import FOREIGN, LOCAL_IGNORE
from tests.support.helpers import make_inputs, oracle

IGNORE = -100
DTYPES = {torch.float32: 2e-5, torch.bfloat16: 2e-2}  # max |error| of a gradient against fp64 (bf16: its rounding)


def _saved(hidden, weight, bias, targets, temperature, ignore_index=IGNORE):
    """lse and entropy of the full vocabulary, as the forward saves them."""
    _, entropy, lse = chunked.forward(hidden, weight, bias, targets, inv_temperature=1.0 / temperature,
                                      ignore_index=ignore_index, with_entropy=True, chunk_size=hidden.shape[0])
    return lse, entropy


def _tiled(hidden, weight, bias, targets, g_l, g_h, temperature, *, chunk_size, vocab_tile, ignore_index=IGNORE,
           vocab_shard=False, lse=None, entropy=None):
    if lse is None:
        lse, entropy = _saved(hidden, weight, bias, targets, temperature, ignore_index)
    return chunked.backward(g_l, g_h, hidden, weight, bias, targets, lse, entropy, inv_temperature=1.0 / temperature,
                            ignore_index=ignore_index, chunk_size=chunk_size, needs_hidden=True, needs_weight=True,
                            needs_bias=bias is not None, vocab_shard=vocab_shard, vocab_tile=vocab_tile)


def _max_err(got, want):
    return (got.double() - want).abs().max().item()


@pytest.mark.parametrize("dtype", list(DTYPES), ids=["fp32", "bf16"])
@pytest.mark.parametrize("entropy_grad", [False, True], ids=["no-entropy-grad", "entropy-grad"])
@pytest.mark.parametrize("n, chunk_size, vocab_tile", [(29, 64, 13), (29, 7, 40), (1, 1, 50), (29, 29, 101)],
                         ids=["one-block-tail", "row-blocks", "one-token", "one-tile"])
def test_matches_fp64(dtype, entropy_grad, n, chunk_size, vocab_tile):
    hidden, weight, targets, bias = make_inputs(n, 24, 101, dtype=dtype, bias=True, scale=2.0,
                                                ignored=(2, 11) if n > 11 else ())
    g = torch.Generator().manual_seed(1)
    g_l = torch.randn(n, generator=g)
    g_h = torch.randn(n, generator=g) if entropy_grad else None
    got = _tiled(hidden, weight, bias, targets, g_l, g_h, 0.7, chunk_size=chunk_size, vocab_tile=vocab_tile)
    _, _, want = oracle(hidden, weight, targets, bias, g_l, g_h if entropy_grad else torch.zeros(n), temperature=0.7)
    for name, grad, ref in zip(("dhidden", "dweight", "dbias"), got, want):
        assert grad.dtype == dtype, name
        assert _max_err(grad, ref) <= DTYPES[dtype] * max(1.0, ref.abs().max().item()), name


def test_tiles_agree_with_one_tile():
    """Tiling the vocabulary changes only the fp32 summation order of dhidden."""
    hidden, weight, targets, bias = make_inputs(40, 32, 333, bias=True, ignored=(0, 39))
    g = torch.Generator().manual_seed(2)
    g_l, g_h = torch.randn(40, generator=g), torch.randn(40, generator=g)
    whole = _tiled(hidden, weight, bias, targets, g_l, g_h, 1.3, chunk_size=40, vocab_tile=333)
    for tile in (1, 64, 100, 332):
        tiled = _tiled(hidden, weight, bias, targets, g_l, g_h, 1.3, chunk_size=40, vocab_tile=tile)
        for a, b in zip(whole, tiled):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ignore_index_minus_one_is_not_confused_with_other_tiles_targets():
    """Tile-local ids of other tiles' tokens must not collide with ignore_index, whatever it is (-1 here)."""
    hidden, weight, targets, _ = make_inputs(16, 8, 50, ignored=())
    targets[3] = -1
    g_l = torch.ones(16)
    got = _tiled(hidden, weight, None, targets, g_l, None, 1.0, chunk_size=16, vocab_tile=9, ignore_index=-1)
    masked = torch.where(targets == -1, -100, targets)
    _, _, want = oracle(hidden, weight, masked, None, g_l, torch.zeros(16))
    assert _max_err(got[0], want[0]) <= 2e-5 and _max_err(got[1], want[1]) <= 2e-5
    assert got[0][3].abs().max() == 0  # the ignored row


def test_non_negative_ignore_index_is_not_confused_with_tile_local_ids():
    """ignore_index 0: a target at a tile's first column has local id 0, which must not read as ignored."""
    hidden, weight, targets, _ = make_inputs(16, 8, 50, ignored=())
    targets[:4] = torch.tensor([9, 18, 27, 0])  # the first column of tiles 1-3 (tile 9), and one ignored row
    g_l = torch.ones(16)
    got = _tiled(hidden, weight, None, targets, g_l, None, 1.0, chunk_size=16, vocab_tile=9, ignore_index=0)
    masked = torch.where(targets == 0, -100, targets)
    _, _, want = oracle(hidden, weight, masked, None, g_l, torch.zeros(16))
    assert _max_err(got[0], want[0]) <= 2e-5 and _max_err(got[1], want[1]) <= 2e-5
    assert got[0][3].abs().max() == 0  # the ignored row


def test_vocab_shards_sum_to_the_full_gradient():
    """vocab_shard=True with tiles inside each shard: shard dweights stack and dhidden shares sum to the full ones."""
    hidden, weight, targets, bias = make_inputs(21, 16, 90, bias=True, ignored=(4,))
    g = torch.Generator().manual_seed(3)
    g_l, g_h = torch.randn(21, generator=g), torch.randn(21, generator=g)
    lse, entropy = _saved(hidden, weight, bias, targets, 0.9)
    full = _tiled(hidden, weight, bias, targets, g_l, g_h, 0.9, chunk_size=21, vocab_tile=90, lse=lse,
                  entropy=entropy)
    shares, dws, dbs = [], [], []
    for start, stop in ((0, 37), (37, 90)):
        local = targets - start
        owned = (targets != IGNORE) & (local >= 0) & (local < stop - start)
        local = torch.where(owned, local, torch.where(targets != IGNORE, FOREIGN, LOCAL_IGNORE))
        dh, dw, db = _tiled(hidden, weight[start:stop], bias[start:stop], local, g_l, g_h, 0.9, chunk_size=5,
                            vocab_tile=10, ignore_index=LOCAL_IGNORE, vocab_shard=True, lse=lse, entropy=entropy)
        shares.append(dh), dws.append(dw), dbs.append(db)
    torch.testing.assert_close(sum(shares), full[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(dws), full[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(dbs), full[2], rtol=1e-5, atol=1e-6)


def test_tile_plan_is_bounded_and_keeps_the_batch_in_one_block():
    # S1: the forward's budget (chunk 512 x V) holds the whole batch by ~4K vocabulary entries.
    rows, tile = chunked.backward_tiles(4096, 32000, 512)
    assert rows == 4096 and tile % 64 == 0 and rows * tile <= 512 * 32000
    # A longer batch: bounded row blocks with tiles of at least the minimum width.
    rows, tile = chunked.backward_tiles(1 << 20, 32000, 512)
    assert rows < 1 << 20 and tile >= tiled_grads._MIN_VOCAB_TILE and rows * tile <= 512 * 32000
    # A small vocabulary: one tile, the old row chunks.
    assert chunked.backward_tiles(100, 50, 8) == (8, 50)


def test_softcap_tiles_agree_with_one_tile():
    """The softcap's derivative is pointwise, so it chains per vocabulary tile as per whole row."""
    hidden, weight, targets, bias = make_inputs(30, 16, 211, bias=True, ignored=(5,), scale=4.0)
    g = torch.Generator().manual_seed(4)
    g_l, g_h = torch.randn(30, generator=g), torch.randn(30, generator=g)
    _, entropy, lse = chunked.forward(hidden, weight, bias, targets, inv_temperature=1.0, ignore_index=IGNORE,
                                      with_entropy=True, chunk_size=30, softcap=5.0)

    def grads(tile):
        return chunked.backward(g_l, g_h, hidden, weight, bias, targets, lse, entropy, inv_temperature=1.0,
                                ignore_index=IGNORE, chunk_size=30, needs_hidden=True, needs_weight=True,
                                needs_bias=True, softcap=5.0, vocab_tile=tile)

    whole, plain = grads(211), chunked.backward(g_l, g_h, hidden, weight, bias, targets, lse, entropy,
                                                inv_temperature=1.0, ignore_index=IGNORE, chunk_size=30,
                                                needs_hidden=True, needs_weight=True, needs_bias=True, vocab_tile=211)
    assert not torch.allclose(whole[1], plain[1])  # the softcap changes the gradient: the case can fail
    for a, b in zip(whole, grads(17)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
