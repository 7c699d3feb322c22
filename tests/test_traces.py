"""Traces: loaders (and their one-line errors), generators' statistics, arrivals, split and scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from jigsaw.env import traces
from jigsaw.env.traces import Trace
from jigsaw.profiles.errors import JigsawError, TraceError

APPS = ("a", "b")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def long_csv(rows: list[tuple[float, str, float]]) -> str:
    return "time_s,app,rps\n" + "".join(f"{t},{a},{r}\n" for t, a, r in rows)


def good_rows() -> list[tuple[float, str, float]]:
    return [(t, a, r) for t in (0, 10, 20, 30) for a, r in (("a", t / 10), ("b", 5.0))]


def functions_csv(rows: list[tuple[str, list[float]]], minutes: int = 3) -> str:
    head = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(k) for k in range(1, minutes + 1)) + "\n"
    return head + "".join(f"o,p,{fn},http," + ",".join(str(c) for c in counts) + "\n" for fn, counts in rows)


LLM_TEXT = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2023-11-16 18:17:03.9799600,4808,10\n"
            "2023-11-16 18:17:04.0319600,3180,8\n"
            "2023-11-16 18:17:04.0781490,110,27\n"
            "2023-11-16 18:17:05.5000000,10,1\n"
            "2023-11-16 18:17:07.9000000,10,1\n")


def trace_error(call, *args, **kwargs) -> TraceError:
    with pytest.raises(TraceError) as e:
        call(*args, **kwargs)
    text = str(e.value)
    assert "\n" not in text and "(fix: " in text
    assert isinstance(e.value, JigsawError)
    return e.value


# ------------------------------------------------------------------------------------------------- loaders


def test_load_csv(tmp_path):
    t = traces.load_csv(write(tmp_path / "t.csv", long_csv(good_rows())))
    assert t.apps == APPS and t.bin_s == 10 and t.duration_s == 40
    np.testing.assert_array_equal(t.times_s, [0, 10, 20, 30])
    np.testing.assert_array_equal(t.rates_rps[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(t.rate_at(np.array([5.0, 25.0, 45.0])), [[0, 5], [2, 5], [0, 0]])
    fast = traces.load_csv(tmp_path / "t.csv", time_scale=0.5, rate_scale=2.0)
    assert fast.bin_s == 5 and fast.duration_s == 20
    np.testing.assert_array_equal(fast.rates_rps, t.rates_rps * 2)


def test_load_csv_with_bom_and_crlf(tmp_path):
    path = tmp_path / "w.csv"
    path.write_bytes(("\ufeff" + long_csv(good_rows())).replace("\n", "\r\n").encode())
    assert traces.load_trace(path).apps == APPS


def test_to_csv_round_trips(tmp_path):
    t = traces.diurnal(APPS, 10.0, 0.5, 600.0, 0.1, 1200.0, 60.0, seed=3)
    t.to_csv(tmp_path / "d.csv")
    back = traces.load_trace(tmp_path / "d.csv")
    np.testing.assert_allclose(back.rates_rps, t.rates_rps, rtol=1e-5)
    np.testing.assert_allclose(back.times_s, t.times_s)


def test_load_azure_llm(tmp_path):
    path = write(tmp_path / "llm.csv", LLM_TEXT)
    t = traces.load_azure_llm(path, "a")
    assert t.apps == ("a",) and t.bin_s == 1.0
    np.testing.assert_array_equal(t.rates_rps[:, 0], [3, 1, 0, 1])  # 03.98 + {0, .05, .10, 1.52, 3.92}
    t2 = traces.load_azure_llm(path, "a", bin_s=2.0, time_scale=0.5, rate_scale=10)
    np.testing.assert_array_equal(t2.rates_rps[:, 0], [20, 5])
    assert t2.bin_s == 1.0
    assert traces.load_trace(path, app="a").rates_rps.sum() == 5


def test_load_azure_llm_across_midnight(tmp_path):
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 23:59:59.5,1,1\n2023-11-17 00:00:01.2,1,1\n"
    t = traces.load_azure_llm(write(tmp_path / "m.csv", text), "a")
    np.testing.assert_array_equal(t.rates_rps[:, 0], [1, 1])  # 1.7 s apart


def test_shipped_azure_trace_matches_its_readme():
    path = traces.DEFAULT_TRACE_DIR / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
    t = traces.load_trace(path, app="social_media", known_apps=traces.H100_APPS)
    assert t.rates_rps.sum() == 8819 and t.duration_s == 3436 and t.rates_rps.max() == 67
    assert (traces.DEFAULT_TRACE_DIR / "azure-llm-2023" / "LICENSE").exists()


def test_load_azure_functions(tmp_path):
    path = write(tmp_path / "f.csv", functions_csv([("f1", [60, 0, 120]), ("f2", [6, 6, 6]), ("f3", [0, 60, 0])]))
    t = traces.load_azure_functions(path, {"a": ["f1", "f3"], "b": "sum"})
    assert t.apps == APPS and t.bin_s == 60
    np.testing.assert_array_equal(t.times_s, [0, 60, 120])
    np.testing.assert_allclose(t.rates_rps, [[1, 1.1], [1, 1.1], [2, 2.1]])
    by_header = traces.load_trace(path, app="b")
    np.testing.assert_allclose(by_header.rates_rps[:, 0], [1.1, 1.1, 2.1])
    fast = traces.load_azure_functions(path, {"a": ["f2"]}, time_scale=0.5)
    assert fast.bin_s == 30 and fast.rates_rps[0, 0] == pytest.approx(0.1)


def test_shipped_synthetic_traces_are_reproducible():
    for name, trace in traces.default_traces().items():
        shipped = traces.load_trace(traces.DEFAULT_TRACE_DIR / name, known_apps=traces.H100_APPS)
        assert shipped.apps == traces.H100_APPS
        np.testing.assert_allclose(shipped.rates_rps, trace.rates_rps, rtol=1e-5, err_msg=name)
        assert shipped.split()[1].duration_s == pytest.approx(0.25 * shipped.duration_s)
    size = sum(p.stat().st_size for p in (ROOT / "profiles" / "data" / "traces").rglob("*") if p.is_file())
    assert size < 1_000_000


# ------------------------------------------------------------------------------------------------ bad input


def csv_error(tmp_path, text: str, **kwargs) -> TraceError:
    path = write(tmp_path / "bad.csv", text)
    e = trace_error(traces.load_csv, path, **kwargs)
    assert str(path) in str(e)
    return e


@pytest.mark.parametrize(("value", "line"), [("-1", 3), ("fast", 3), ("nan", 3), ("", 3)])
def test_bad_rate(tmp_path, value, line):
    rows = long_csv(good_rows()).splitlines()
    rows[line - 1] = f"0,b,{value}"
    e = csv_error(tmp_path, "\n".join(rows) + "\n")
    assert f"bad.csv:{line}: rps:" in str(e)


def test_bad_time(tmp_path):
    e = csv_error(tmp_path, long_csv([(0, "a", 1.0)]).replace("0,a", "soon,a"))
    assert "bad.csv:2: time_s:" in str(e)


def test_unknown_app(tmp_path):
    e = csv_error(tmp_path, long_csv(good_rows()), known_apps=["a"])
    assert "bad.csv:3: app: unknown app 'b'" in str(e) and "use one of a" in str(e)


def test_unsorted_and_duplicate_times(tmp_path):
    rows = good_rows()
    rows[2], rows[4] = rows[4], rows[2]  # a@20 before a@10
    e = csv_error(tmp_path, long_csv(rows))
    assert "bad.csv:6: time_s:" in str(e) and "comes before" in str(e)
    e = csv_error(tmp_path, long_csv([*good_rows(), (30, "a", 1.0)]))
    assert "bad.csv:10: time_s:" in str(e) and "repeats" in str(e)


def test_uneven_or_unshared_bins(tmp_path):
    e = csv_error(tmp_path, long_csv([(t, "a", 1.0) for t in (0, 10, 25)]))
    assert "bad.csv:4: time_s:" in str(e) and "even spacing" in str(e)
    e = csv_error(tmp_path, long_csv([(0, "a", 1.0), (10, "a", 1.0), (0, "b", 1.0)]))
    assert "app 'b' has no row for time 10" in str(e)
    e = csv_error(tmp_path, long_csv([(0, "a", 1.0)]))
    assert "single time bin" in str(e)


def test_empty_and_missing_columns(tmp_path):
    assert "bad.csv:1: header: empty file" in str(csv_error(tmp_path, ""))
    assert "no rows" in str(csv_error(tmp_path, "time_s,app,rps\n"))
    e = csv_error(tmp_path, "time_s,app\n0,a\n")
    assert "bad.csv:1: header: missing column(s) rps" in str(e)
    e = trace_error(traces.load_trace, write(tmp_path / "odd.csv", "x,y\n1,2\n"))
    assert "odd.csv:1: header: unrecognised" in str(e)
    assert "cannot read" in str(trace_error(traces.load_csv, tmp_path / "absent.csv"))


def test_bad_scales(tmp_path):
    path = write(tmp_path / "t.csv", long_csv(good_rows()))
    assert "time_scale" in str(trace_error(traces.load_csv, path, time_scale=0))
    assert "rate_scale" in str(trace_error(traces.load_csv, path, rate_scale=-1))


def test_azure_llm_bad_input(tmp_path):
    lines = LLM_TEXT.splitlines()
    path = write(tmp_path / "llm.csv", "\n".join([lines[0], lines[2], lines[1], *lines[3:]]))
    e = trace_error(traces.load_azure_llm, path, "a")
    assert "llm.csv:3: TIMESTAMP:" in str(e) and "sort" in str(e)
    path = write(tmp_path / "llm.csv", LLM_TEXT.replace("18:17:05.5", "18:71:05.5"))
    assert "llm.csv:5: TIMESTAMP: " in str(trace_error(traces.load_azure_llm, path, "a"))
    path = write(tmp_path / "llm.csv", "ContextTokens,GeneratedTokens\n1,2\n")
    assert "missing column(s) TIMESTAMP" in str(trace_error(traces.load_azure_llm, path, "a"))
    path = write(tmp_path / "llm.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n")
    assert "llm.csv:2: rows:" in str(trace_error(traces.load_azure_llm, path, "a"))
    path = write(tmp_path / "llm.csv", LLM_TEXT)
    assert "app: unknown app 'z'" in str(trace_error(traces.load_azure_llm, path, "z", known_apps=["a"]))


def test_azure_functions_bad_input(tmp_path):
    path = write(tmp_path / "f.csv", functions_csv([("f1", [1, 2, 3]), ("f2", [1, -2, 3])]))
    assert "f.csv:3: minute 2:" in str(trace_error(traces.load_azure_functions, path, {"a": "sum"}))
    path = write(tmp_path / "f.csv", functions_csv([("f1", [1, 2, 3])]).replace(",2,3\n", ",3,2\n", 1))
    e = trace_error(traces.load_azure_functions, path, {"a": "sum"})
    assert "f.csv:1: header: minute column '3' is out of order" in str(e)
    path = write(tmp_path / "f.csv", functions_csv([("f1", [1, 2, 3])]).replace(",2,3\n", ",1,3\n", 1))
    assert "'1' repeats" in str(trace_error(traces.load_azure_functions, path, {"a": "sum"}))
    path = write(tmp_path / "f.csv", functions_csv([("f1", [1, 2, 3])]))
    assert "mapping: HashFunction id(s) not in the file: nope" in str(
        trace_error(traces.load_azure_functions, path, {"a": ["nope"]}))
    assert "mapping.z: unknown app" in str(
        trace_error(traces.load_azure_functions, path, {"z": "sum"}, known_apps=["a"]))
    assert "mapping.a:" in str(trace_error(traces.load_azure_functions, path, {"a": "f1"}))
    path = write(tmp_path / "f.csv", functions_csv([]))
    assert "f.csv:2: rows:" in str(trace_error(traces.load_azure_functions, path, {"a": "sum"}))
    path = write(tmp_path / "f.csv", "HashOwner,HashApp,HashFunction\n")
    assert "missing column(s) Trigger" in str(trace_error(traces.load_azure_functions, path, {"a": "sum"}))


# ---------------------------------------------------------------------------------------- trace operations


def test_split_by_time_and_refuses_short_traces():
    t = traces.poisson(APPS, 1.0, 800.0, 10.0)
    train, held = t.split()
    assert len(train.times_s) == 60 and len(held.times_s) == 20
    assert train.times_s[-1] < held.times_s[0] and held.times_s[-1] == t.times_s[-1]
    e = trace_error(traces.poisson(APPS, 1.0, 50.0, 10.0).split)
    assert "trace has no held-out part" in str(e)
    assert "held_out_fraction" in str(trace_error(t.split, 1.5))


def test_window_and_scaled():
    t = traces.steps(APPS, [1.0, 2.0, 3.0], 60.0, 30.0)
    w = t.window(60.0, 120.0)
    np.testing.assert_array_equal(w.times_s, [60, 90])
    np.testing.assert_array_equal(w.rates_rps[:, 0], [2, 2])
    assert "window" in str(trace_error(t.window, 500.0, 600.0))
    s = t.scaled(2.0, 0.5)
    assert s.duration_s == 2 * t.duration_s and s.rates_rps.max() == 1.5


def test_trace_constructor_checks():
    with pytest.raises(TraceError):
        Trace(np.array([0.0, 1.0, 3.0]), APPS, np.ones((3, 2)), 1.0)
    with pytest.raises(TraceError):
        Trace(np.array([0.0, 1.0]), APPS, -np.ones((2, 2)), 1.0)


def test_arrivals_match_rates():
    t = traces.steps(APPS, np.array([[10.0, 0.0], [50.0, 5.0]]), 100.0, 10.0)
    times, app = t.arrivals(np.random.default_rng(0))
    assert np.all(np.diff(times) >= 0) and times.min() >= 0 and times.max() < 200
    counts = np.array([[np.sum((app == j) & (times < 100)), np.sum((app == j) & (times >= 100))] for j in (0, 1)])
    expected = np.array([[1000, 5000], [0, 500]])
    assert np.all(np.abs(counts - expected) <= 4 * np.sqrt(expected) + 1e-9)
    part, _ = t.arrivals(np.random.default_rng(1), 95.0, 105.0)
    assert part.min() >= 95 and part.max() < 105 and 150 < len(part) < 450  # 5 s x 10 + 5 s x 55 = 325
    again = t.arrivals(np.random.default_rng(0))
    np.testing.assert_array_equal(again[0], times)


# ---------------------------------------------------------------------------------------------- generators


def test_poisson_is_constant():
    t = traces.poisson(APPS, [3.0, 4.0], 600.0, 60.0)
    np.testing.assert_array_equal(t.rates_rps, np.tile([3.0, 4.0], (10, 1)))
    assert "rate_rps" in str(trace_error(traces.poisson, APPS, [1.0, 2.0, 3.0], 600.0))
    assert "duration_s" in str(trace_error(traces.poisson, APPS, 1.0, 90.0, 60.0))


def test_diurnal_mean_peak_and_trough():
    t = traces.diurnal(["x"], 100.0, 0.5, 3600.0, 0.0, 7200.0, 60.0, seed=0)
    r = t.rates_rps[:, 0]
    assert r.mean() == pytest.approx(100.0, rel=1e-3)
    assert r.max() == pytest.approx(150.0, rel=1e-2) and r.min() == pytest.approx(50.0, rel=1e-2)
    assert t.times_s[np.argmax(r[:60])] == pytest.approx(1800.0, abs=60) and np.argmin(r[:60]) in (0, 59)
    noisy = traces.diurnal(["x"], 100.0, 0.5, 3600.0, 0.2, 7200.0, 60.0, seed=0)
    ratio = noisy.rates_rps[:, 0] / r
    assert ratio.mean() == pytest.approx(1.0, abs=0.06) and ratio.std() == pytest.approx(0.2, rel=0.25)
    same = traces.diurnal(["x"], 100.0, 0.5, 3600.0, 0.2, 7200.0, 60.0, seed=0)
    np.testing.assert_array_equal(same.rates_rps, noisy.rates_rps)
    other = traces.diurnal(["x"], 100.0, 0.5, 3600.0, 0.2, 7200.0, 60.0, seed=1)
    assert not np.array_equal(other.rates_rps, noisy.rates_rps)


@pytest.mark.parametrize("cv2", [0.25, 1.0, 4.0])
def test_gamma_arrivals_rate_and_cv2(cv2):
    times = traces.gamma_arrivals(100.0, cv2, 1000.0, np.random.default_rng(0))
    gaps = np.diff(times)
    assert len(times) / 1000.0 == pytest.approx(100.0, rel=0.03)
    assert gaps.var() / gaps.mean() ** 2 == pytest.approx(cv2, rel=0.1)
    assert times.min() >= 0 and times.max() < 1000


def test_bursty_mean_and_determinism():
    t = traces.bursty(APPS, [50.0, 5.0], 4.0, 2000.0, 10.0, seed=7)
    assert t.rates_rps.mean(axis=0) == pytest.approx([50.0, 5.0], rel=0.05)
    np.testing.assert_array_equal(t.rates_rps, traces.bursty(APPS, [50.0, 5.0], 4.0, 2000.0, 10.0, seed=7).rates_rps)
    calm = traces.bursty(APPS, [50.0, 5.0], 0.25, 2000.0, 10.0, seed=7)
    assert t.rates_rps[:, 0].std() > 2 * calm.rates_rps[:, 0].std()


def test_steps():
    t = traces.steps(APPS, [1.0, 5.0], 120.0, 60.0)
    np.testing.assert_array_equal(t.rates_rps[:, 1], [1, 1, 5, 5])
    assert "levels_rps" in str(trace_error(traces.steps, APPS, [1.0, -5.0], 120.0))


def test_spikes():
    t = traces.spikes(APPS, 10.0, 100.0, 3, 120.0, 3600.0, 60.0, seed=2)
    extra = (t.rates_rps - 10.0).sum(axis=0) * 60.0
    np.testing.assert_allclose(extra, 3 * 120.0 * 100.0)  # every spike lies fully inside the trace
    assert (t.rates_rps >= 10.0).all() and (t.rates_rps == 10.0).mean() > 0.8
    np.testing.assert_array_equal(t.rates_rps, traces.spikes(APPS, 10.0, 100.0, 3, 120.0, 3600.0, 60.0, 2).rates_rps)
