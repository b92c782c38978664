"""Prefix index: chained block keys, shared prefixes hit, diverging blocks miss."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from inferos.kvstore.prefix_index import PrefixIndex, block_keys

TOKENS = np.random.default_rng(0).integers(0, 49152, size=200).tolist()


def test_only_full_blocks_get_keys() -> None:
    assert len(block_keys(TOKENS, 32)) == 6
    assert block_keys(TOKENS[:31], 32) == []


def test_keys_depend_on_everything_before() -> None:
    a = TOKENS[:64]
    b = [TOKENS[0] + 1] + TOKENS[1:32] + TOKENS[32:64]  # same second block, other history
    ka, kb = block_keys(a, 32), block_keys(b, 32)
    assert ka[0] != kb[0] and ka[1] != kb[1]
    assert block_keys(a, 32) == ka  # deterministic


def test_shared_prefix_hits_and_diverging_blocks_miss() -> None:
    index: PrefixIndex[str] = PrefixIndex(32)
    for i, key in enumerate(block_keys(TOKENS[:128], 32)):
        index.put(key, f"block{i}")
    turn2 = TOKENS[:128] + [1, 2, 3] * 20  # the next turn: the old conversation plus more
    found = index.match(turn2)
    assert found.n_tokens == 128 and found.entries == ("block0", "block1", "block2", "block3")
    assert (index.hits, index.misses) == (4, 1)
    diverged = TOKENS[:70] + [7] * 60  # same first two blocks, different third
    found = index.match(diverged)
    assert found.n_tokens == 64
    assert (index.hits, index.misses) == (6, 3)


def test_a_missing_block_hides_the_blocks_after_it() -> None:
    index: PrefixIndex[int] = PrefixIndex(32)
    keys = block_keys(TOKENS[:128], 32)
    for i, key in enumerate(keys):
        index.put(key, i)
    index.remove(keys[1])
    assert index.match(TOKENS[:128]).n_tokens == 32


@settings(max_examples=50, deadline=None)
@given(
    stored=st.lists(st.integers(0, 5), min_size=0, max_size=80),
    query=st.lists(st.integers(0, 5), min_size=0, max_size=80),
    block=st.sampled_from([1, 4, 16]),
)
def test_match_is_the_longest_common_full_block_prefix(
    stored: list[int], query: list[int], block: int
) -> None:
    index: PrefixIndex[int] = PrefixIndex(block)
    for i, key in enumerate(block_keys(stored, block)):
        index.put(key, i)
    common = 0
    while common < min(len(stored), len(query)) and stored[common] == query[common]:
        common += 1
    expected = min(common // block, len(stored) // block, len(query) // block) * block
    assert index.match(query).n_tokens == expected
