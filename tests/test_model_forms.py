"""Model level: parallel, chunkwise and step forms agree with a float64 reference, with and without sLSTM blocks."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import randomize_, rel_err
from xlstm_edge import init_state, state_bytes, state_spec, xLSTMConfig, xLSTMForCausalLM
from xlstm_edge.state import flatten_state, unflatten_state

PRESETS = ["tiny", "tiny-ms"]
# fp32 vs float64 on randomly perturbed models: over 150 seeds the median rel_err was 5e-7..1.2e-6 and the
# worst 1.1e-5 (tiny-ms, one seed: an ill-conditioned draw). 3e-5 keeps CI from flaking on such draws.
RTOL_FP32 = 3e-5


def _models(preset: str, **overrides):
    model = randomize_(xLSTMForCausalLM(xLSTMConfig.from_preset(preset, **overrides)).eval())
    return model, copy.deepcopy(model).double()


def _step_all(model, ids, state=None):
    logits = []
    for t in range(ids.shape[1]):
        out, state = model(ids[:, t : t + 1], state if state is not None else model.init_state(ids.shape[0]))
        logits.append(out)
    return torch.cat(logits, 1), state


@pytest.mark.parametrize("preset", PRESETS)
def test_forms_match_float64(seed, preset):
    model, ref = _models(preset)
    ids = torch.randint(0, model.config.vocab_size, (2, 37))
    with torch.no_grad():
        expected, _ = ref(ids, form="recurrent")
        for form, chunk in [("parallel", None), ("chunkwise", 16), ("chunkwise", 5), ("recurrent", None)]:
            got, _ = model(ids, form=form, chunk_size=chunk)
            assert rel_err(got, expected) <= RTOL_FP32, (preset, form, chunk, seed, rel_err(got, expected))
        got, _ = _step_all(model, ids)
        assert rel_err(got, expected) <= RTOL_FP32, (preset, "step", seed)


@pytest.mark.parametrize("preset", PRESETS)
def test_forms_return_the_same_state(seed, preset):
    model, ref = _models(preset)
    ids = torch.randint(0, model.config.vocab_size, (2, 29))
    with torch.no_grad():
        _, expected = ref(ids, form="recurrent")
        for form, chunk in [("parallel", None), ("chunkwise", 8)]:
            _, got = model(ids, form=form, chunk_size=chunk)
            for layer, (g, e) in enumerate(zip(got, expected, strict=True)):
                for name in e:
                    # mLSTM C, n are relative to exp(m); compare them unscaled
                    scale_g = torch.exp(g["m"]).view(*g["m"].shape, *[1] * (g[name].dim() - g["m"].dim()))
                    scale_e = torch.exp(e["m"]).view(*e["m"].shape, *[1] * (e[name].dim() - e["m"].dim()))
                    if "C" in e and name in ("C", "n"):
                        a, b = g[name] * scale_g, e[name] * scale_e
                    else:
                        a, b = g[name], e[name]
                    assert rel_err(a, b) <= RTOL_FP32, (preset, form, layer, name, seed)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("prefix", [1, 13, 32])
def test_stepping_from_any_prefix_equals_one_pass(seed, preset, prefix):
    model, ref = _models(preset)
    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    with torch.no_grad():
        expected, _ = ref(ids, form="parallel")
        head, state = model(ids[:, :prefix], form="chunkwise")
        tail, _ = _step_all(model, ids[:, prefix:], state)
        got = torch.cat([head, tail], 1)
    # the file's float32 bound, as for the other forms: a rare draw is ill-conditioned for every float32
    # form alike (seed 3235893446, tiny: one position off by 2e-4; parallel 1.5e-5, steps 1.2e-5, this
    # path 1.35e-5 from float64), while 900 other draws stay below 6e-6
    assert rel_err(got, expected) <= RTOL_FP32, (preset, prefix, seed, rel_err(got, expected))


def test_chunked_prefill_with_state_equals_one_pass(seed):
    model, ref = _models("tiny-ms")
    ids = torch.randint(0, model.config.vocab_size, (1, 50))
    with torch.no_grad():
        expected, _ = ref(ids)
        a, state = model(ids[:, :23])
        b, state = model(ids[:, 23:41], state, chunk_size=7)
        c, _ = model(ids[:, 41:], state, form="parallel")
    assert rel_err(torch.cat([a, b, c], 1), expected) <= 1e-5


def test_last_only_logits(seed):
    model, _ = _models("tiny")
    ids = torch.randint(0, model.config.vocab_size, (3, 20))
    with torch.no_grad():
        full, _ = model(ids)
        last, _ = model(ids, last_only=True)
    assert rel_err(last[:, 0], full[:, -1]) <= 1e-6


def test_state_spec_and_sizes():
    cfg = xLSTMConfig.from_preset("tiny-ms")
    spec = state_spec(cfg)
    names = [s.input_name for s in spec]
    assert names[:3] == ["past.0.C", "past.0.n", "past.0.m"]
    assert "past.1.conv" in names and "present.1.y" == spec[3].output_name
    state = init_state(cfg, batch_size=2)
    assert state_bytes(cfg, 2) == 4 * sum(t.numel() for d in state for t in d.values())
    flat = flatten_state(state)
    back = unflatten_state(flat, cfg)
    assert all(torch.equal(back[i][k], state[i][k]) for i in range(len(state)) for k in state[i])
    with pytest.raises(ValueError, match="missing"):
        unflatten_state({k: v for k, v in flat.items() if k != "past.0.C"}, cfg)
    with pytest.raises(ValueError, match="shape"):
        unflatten_state({**flat, "past.0.m": torch.zeros(2, 5)}, cfg)


def test_7b_state_size_matches_the_paper_arithmetic():
    cfg = xLSTMConfig.from_preset("7b")
    assert (cfg.qk_head_dim, cfg.v_head_dim, cfg.ffn_dim) == (256, 512, 10944)
    assert state_bytes(cfg) == 4 * 32 * 8 * (256 * 512 + 256 + 1)  # 134 MB at any context length


def test_bad_inputs():
    model, _ = _models("tiny")
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="form"):
        model(torch.ones(1, 3, dtype=torch.long), form="magic")
    with pytest.raises(ValueError, match="layers"):
        model(torch.ones(1, 3, dtype=torch.long), state=[{}])
    with pytest.raises(ValueError, match="preset"):
        xLSTMConfig.from_preset("huge")
    with pytest.raises(ValueError, match="slstm_at"):
        xLSTMConfig.from_preset("tiny", slstm_at=[5])


def test_column_major_linears_keep_values_and_outputs(seed):
    """The decode layout changes strides only: same state_dict values; logits and state within float32
    rounding of the float64 reference (only the summation order differs from the row-major layout:
    both land at 1e-6..3e-6 on the state C after 21 tokens)."""
    torch.manual_seed(seed)
    model = randomize_(xLSTMForCausalLM(xLSTMConfig.from_preset("tiny-ms"))).eval()
    ids = torch.randint(0, 256, (2, 21))
    with torch.no_grad():
        ref, ref_state = copy.deepcopy(model).double()(ids)
        row, _ = model(ids)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.column_major_linears_()
        assert not model.lm_head.weight.is_contiguous()
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        col, col_state = model(ids)
        step_logits, _ = model(ids[:, :1], init_state(model.config, 2))  # the one-step form too
    assert rel_err(row, ref) <= 1e-5 and rel_err(col, ref) <= 1e-5, seed
    assert rel_err(step_logits[:, 0], ref[:, 0]) <= 1e-5, seed
    for c, e in zip(col_state, ref_state, strict=True):
        for name in c:
            assert rel_err(c[name], e[name]) <= 1e-5, (seed, name)
