"""``benchmarks/bench_generate.py`` and its tables in ``benchmarks/bench_tables.py``.

The floor is plain batched decoding of the same rows: on a tiny float64 Llama, the N-row cache the
floor builds from one prefill of the prompt set (batch index of its keys and values) gives exactly
the logits of a plain decode step after a prefill of the N left-padded sequences (row r over prompt
r mod B), and timing it leaves the cache at the prefix. Then one quick run on the embedded model,
resumed by a second process-like call (the resumable protocol), and the docs tables from its JSON;
and the committed JSON, whose floor was a prefill of N tokens of one sequence, renders no floor
figure. The embedded-model run takes ~30 s here, most of it loading the model.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


G = _load("bench_generate")
T = _load("bench_tables")


@torch.no_grad()
def test_floor_rows_are_a_plain_batched_decode(tiny):
    prompts = [torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11]]), torch.tensor([[12, 13, 14]])]
    fc = G.FloorCache(tiny, prompts)
    N = 7
    cache, kw = fc.rows(N)
    got = tiny(past_key_values=cache, **kw).logits[:, -1]
    # what a plain batched decode of the N sequences computes: a prefill of them, left-padded, then one step
    seqs = [prompts[r % 3] for r in range(N)]
    ids, mask = G.C.left_pad(seqs)
    out = tiny(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    step_mask = torch.cat([mask, torch.ones(N, 1, dtype=mask.dtype)], 1)
    last = torch.stack([s[0, -1] for s in seqs]).view(N, 1)
    assert torch.equal(kw["input_ids"], last) and torch.equal(kw["attention_mask"], step_mask)
    want = tiny(input_ids=last, attention_mask=step_mask, position_ids=step_mask.sum(-1, keepdim=True) - 1,
                past_key_values=out.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # cropped back, the same step again gives the same logits; the prefill's cache is untouched
    cache.crop(-1)
    assert cache.get_seq_length() == fc.length == 9
    torch.testing.assert_close(tiny(past_key_values=cache, **kw).logits[:, -1], got, rtol=0, atol=0)
    assert fc.cache.get_seq_length() == 9 and fc.cache.layers[0].keys.shape[0] == 3
    times = G.floor_times(tiny, prompts, [1, 2, 4], reps=2)
    assert sorted(times) == [1, 2, 4] and all(t > 0 for t in times.values())


def test_floor_grid_interpolation_and_pricing():
    assert G.floor_grid(10, 50) == [1, 2, 4, 8, 16]
    assert G.floor_grid(1, 50) == [1, 2]
    assert G.floor_grid(5000, 100)[-1] == 384                # FLOOR_MAX_TOKENS: 384 x 100 cached tokens at most
    table = {1: 1.0, 2: 2.0, 4: 3.0}
    assert G.interp(table, 1) == (1.0, False) and G.interp(table, 3) == (2.5, False)
    assert G.interp(table, 8) == (5.0, True)                 # the last segment's 0.5 s per row
    rounds = [dict(sets={"0": [[1, 1.0], [2, 2.0]]}), dict(sets={"0": [[1, 3.0], [2, 2.0], [4, 3.0]]}),
              dict(sets={"0": [[1, 2.0]]})]
    tables = G.floor_tables(rounds)
    assert tables == {"0": {1: 2.0, 2: 2.0, 4: 3.0}}
    pair = dict(decode_call_rows={"0": [1, 4, 8]}, epic_decode_s=20.0, epic_call_s=10.0)
    G.price_pair(pair, tables)
    assert pair["floor_s"] == 2.0 + 3.0 + 5.0 and pair["calls_over_floor"] == 1.0 and pair["epic_over_floor"] == 2.0
    assert pair["floor_extrapolated_share"] == 0.5


COMMITTED = ROOT / "benchmarks" / "results" / "bench_generate.json"


def test_committed_json_renders_its_floor():
    """The committed JSON (the new floor) shows each row's EPIC / floor and calls / floor."""
    g = json.loads(COMMITTED.read_text())
    assert g.get("floor_kind") == G.FLOOR_KIND
    text = "\n".join([T.t_generate(g, COMMITTED), T.t_readme(g, COMMITTED), T.t_summary_generate(g)])
    assert "to be regenerated" not in text.split("full vocabulary")[0]
    for r in g["results"]:
        assert f"{r['epic_over_floor']:.2f}x" in text and f"{r['calls_over_floor']:.2f}x" in text


def test_old_floor_json_renders_no_floor_figure():
    """A JSON whose floor was a prefill (no ``floor_kind``): its floor figures are never shown."""
    g = json.loads(COMMITTED.read_text())
    g.pop("floor_kind")                       # as the JSONs written before the plain-decode floor
    path = COMMITTED
    text = "\n".join([T.t_generate(g, path), T.t_readme(g, path), T.t_summary_generate(g)])
    for r in g["results"]:
        assert f"{r['epic_over_floor']:.2f}x" not in text and f"{r['calls_over_floor']:.2f}x" not in text
    assert "to be regenerated by `bench_generate.py --cases topk50`" in text
    assert T.GENERATE_CMD_TOPK50 in text and "library host ms / token" in text
    # the host time of an older JSON comes from its decode and in-call seconds
    r = g["results"][0]
    host = sorted(1e3 * (x["epic_decode_s"] - x["epic_call_s"]) / (r["prompts"] * (r["new_tokens"] - 1))
                  for x in r["pairs"])
    assert T._gen_derived(r)["host_ms_per_token"] == pytest.approx(host[len(host) // 2])


@pytest.fixture(scope="module")
def smol():
    model, tok, _ = G.C.load()
    return model, tok


def test_quick_run_resumes_and_renders(smol, tmp_path, capsys):
    model, tok = smol
    out = tmp_path / "bench_generate.json"
    threads = torch.get_num_threads()
    argv = ["--quick", "--cases", "topk50", "--batches", "8", "--json", str(out), "--threads", "1"]
    try:
        first = G.main(argv, model=model, tok=tok)
        assert len(first["results"][0]["pairs"]) == 1 and len(first["floor_rounds"]) == 1
        second = G.main(argv + ["--resume", "--repeats", "2"], model=model, tok=tok)
    finally:
        torch.set_num_threads(threads)
    g = json.loads(out.read_text())
    assert g["floor_kind"] == G.FLOOR_KIND and len(g["floor_rounds"]) == 2 and g["machine"]["earlier_runs"]
    r = g["results"][0]
    assert (r["case"], r["batch"], len(r["pairs"])) == ("topk50", 8, 2) and second["results"][0]["pairs"] == r["pairs"]
    for x in r["pairs"]:
        rows = x["decode_call_rows"]["0+1"]
        assert rows and x["decode_tokens"] == 2 * 5 and x["decode_steps"] == 5
        assert 0 < x["call_share"] < 1 and x["host_ms_per_token"] > 0
        assert x["host_ms_per_step"] == pytest.approx(2 * x["host_ms_per_token"])
        assert x["floor_s"] > 0 and x["calls_over_floor"] == pytest.approx(x["epic_call_s"] / x["floor_s"])
        assert max(rows) <= max(p["rows"] for p in g["floor_grid"]["0+1"])    # the grid covers every call
    assert g["prefix_lens"] == {"0+1": 96}
    text = T.t_generate(g, out)
    assert f"{r['calls_over_floor']:.2f}x" in text and "to be regenerated" not in text
    assert "**" in T.t_summary_generate(g) and "/ floor" in T.t_readme(g, out)
    capsys.readouterr()
    # a JSON of another floor is not resumed
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"results": [], "floor_grid": []}))
    with pytest.raises(SystemExit, match="another floor"):
        G.main(["--quick", "--json", str(old), "--resume"], model=model, tok=tok)
