"""The prefix-keyed state cache: resuming from a stored prefix equals prefilling the whole prompt; LRU on disk."""

from __future__ import annotations

import time

import pytest
import torch
from xlstm_edge.runtime import load
from xlstm_edge.runtime.state_cache import StateCache, entry_bytes, prefix_key, resume

from tests.conftest import rel_err
from tests.runtime.conftest import random_ids


@pytest.fixture(scope="module")
def sess(model_ms):
    return load(model_ms, num_threads=1)


def test_resume_equals_whole_prefill(sess, seed, tmp_path):
    ids = random_ids(45)
    cut = int(torch.randint(5, 40, ()).item())
    sess.reset(1)
    want = sess.prefill(ids).copy()
    want_state = sess.get_state()
    cache = StateCache(tmp_path, sess.layout, 1 << 30)
    sess.reset(1)
    sess.prefill(ids[:cut])
    cache.store(ids[:cut], sess.get_state())
    cache.flush()
    sess.reset(1)
    assert resume(sess, cache, ids) == cut
    got = sess.get_state()
    assert rel_err(got.logits, want) < 1e-5, (seed, cut)
    for a, b in zip(got.tensors, want_state.tensors, strict=True):
        if abs(b).max() > 0:
            assert rel_err(a, b) < 1e-5, (seed, cut)
    assert int(got.num_tokens[0]) == len(ids)


def test_resume_from_a_state_with_a_pending_token(sess, seed):
    """A reply's state holds its last sampled token unfed: the key includes it, the prefill feeds it."""
    ids = random_ids(30)
    sess.reset(1)
    want = sess.prefill(ids).copy()
    sess.reset(1)
    sess.prefill(ids[:19])
    sess.set_pending(torch.tensor([ids[19]]))
    cache = StateCache(None, sess.layout, 1 << 30)
    cache.store(ids[:20], sess.get_state())
    sess.reset(1)
    assert resume(sess, cache, ids) == 20
    assert rel_err(sess.logits, want) < 1e-5, seed
    sess.reset(1)
    assert resume(sess, cache, ids[:20]) == 20  # the whole prompt stored: only the pending token is fed
    assert sess.logits is not None and int(sess.num_tokens[0]) == 20


def test_longest_stored_prefix_wins_and_keys_are_exact(sess):
    ids = random_ids(24)
    cache = StateCache(None, sess.layout, 1 << 30)
    for n in (4, 10, 16):
        sess.reset(1)
        sess.prefill(ids[:n])
        cache.store(ids[:n], sess.get_state())
    assert cache.lookup(ids)[1] == 16
    assert cache.lookup(ids[:12])[1] == 10
    other = list(ids)
    other[7] = (other[7] + 1) % 256
    assert cache.lookup(other)[1] == 4
    assert cache.lookup([(ids[0] + 1) % 256, *ids[1:]]) is None


def test_disk_entries_survive_a_restart_and_lru_evicts(sess, tmp_path):
    ids = [random_ids(8) for _ in range(3)]
    sess.reset(1)
    sess.prefill(ids[0])
    per_entry = entry_bytes(sess.get_state())
    cache = StateCache(tmp_path, sess.layout, int(2.5 * per_entry))
    for row in ids[:2]:
        sess.reset(1)
        sess.prefill(row)
        cache.store(row, sess.get_state())
        time.sleep(0.01)
    cache.flush()
    files = sorted(p.name for p in (tmp_path / sess.layout.config_hash).iterdir())
    assert files == sorted(f"{prefix_key(r)}.safetensors" for r in ids[:2])
    again = StateCache(tmp_path, sess.layout, int(2.5 * per_entry))  # a restarted server
    assert len(again) == 2 and again.lookup(ids[0] + [1, 2])[1] == 8  # touches entry 0
    time.sleep(0.01)
    sess.reset(1)
    sess.prefill(ids[2])
    again.store(ids[2], sess.get_state())
    again.flush()
    assert again.lookup(ids[1]) is None  # the least recently used went
    assert again.lookup(ids[0])[1] == 8 and again.lookup(ids[2])[1] == 8
    assert len(list((tmp_path / sess.layout.config_hash).iterdir())) == 2
    assert not list((tmp_path / sess.layout.config_hash).glob(".*"))  # no partial files left


def test_incremental_prefix_keys_equal_whole_hashes():
    from xlstm_edge.runtime.state_cache import _prefix_keys

    ids = random_ids(50)
    lengths = sorted({int(n) for n in torch.randint(1, 51, (6,))})
    assert _prefix_keys(ids, lengths) == {n: prefix_key(ids[:n]) for n in lengths}
