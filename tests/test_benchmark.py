import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from keras_fastfcn import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import report  # noqa: E402  (benchmarks/report.py)


def _row(upsampler, latency, gflops, peak, growth):
    return {"head": "encnet", "backbone": "resnet50", "upsampler": upsampler,
            "latency_s": latency, "fps": 1 / latency, "gflops": gflops, "xla": False,
            "params": {"backbone": 23.6e6, "upsampler": 19.7e6 if upsampler == "jpu" else 0,
                       "head": 1.6e6},
            "params_total": 45e6, "train_peak_rss_gb": peak, "train_step_growth_gb": growth}


def test_ratios_and_report(tmp_path):
    results = [_row("jpu", 0.5, 200.0, 3.0, 1.8), _row("os8", 1.5, 500.0, 4.0, 2.4),
               {"head": "encnet", "backbone": "resnet50", "upsampler": "os16", "error": "boom"}]
    (ratio,) = benchmark.ratios(results)
    assert ratio["upsampler"] == "jpu"
    assert ratio["speedup"] == pytest.approx(3.0)
    assert ratio["flops_ratio"] == pytest.approx(0.4)
    assert ratio["memory_ratio"] == pytest.approx(0.75)
    assert ratio["step_growth_ratio"] == pytest.approx(0.75)
    benchmark.write_results(results, str(tmp_path), "test machine", 512, 480, 2)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["machine"] == "test machine" and len(payload["results"]) == 3
    assert report.main([str(tmp_path / "results.json")]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| encnet | resnet50 | jpu | 0.500 | 2.00 | 200 |" in text
    assert "3.00x" in text and "error: boom" in text
    with Image.open(tmp_path / "chart.png") as chart:
        assert chart.size[0] > 300 and chart.size[1] > 300


def test_cli_rejects_unknown_names():
    from keras_fastfcn import cli

    assert cli.main(["benchmark", "--heads", "unet", "--output", "/tmp/kf_never"]) == 1


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "keras_fastfcn", "benchmark", "--quick",
                           "--no-memory", "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "results.json").read_text())
    rows = {r["upsampler"]: r for r in payload["results"]}
    assert set(rows) == {"jpu", "os8"}
    for row in rows.values():
        # `--no-memory`: the training-memory children would double the CI time.
        assert row["latency_s"] > 0 and row["gflops"] > 0 and "train_peak_rss_gb" not in row
    # FLOPs are deterministic: JPU at stride 8 costs well under the dilated backbone.
    assert rows["jpu"]["gflops"] < 0.6 * rows["os8"]["gflops"]
    assert "vs os8" in proc.stdout


def test_resume_keeps_finished_configurations(monkeypatch):
    calls = []
    monkeypatch.setattr(benchmark, "_child",
                        lambda kind, config, options: calls.append((kind, config)) or
                        {"latency_s": 1.0, "fps": 1.0, "gflops": 1.0, "params": {},
                         "params_total": 0, "train_peak_rss_gb": 1.0,
                         "train_step_growth_gb": 0.5})
    done = [_row("jpu", 0.5, 200.0, 3.0, 1.8),
            {"head": "encnet", "backbone": "resnet50", "upsampler": "os8", "error": "boom"}]
    snapshots = []
    rows = benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu", "os8"], done=done,
                                    log=lambda text: None,
                                    on_result=lambda r: snapshots.append(len(r)))
    # The finished JPU row is kept; the failed os8 row is measured again (speed + memory).
    assert rows[0] is done[0]
    assert [kind for kind, _ in calls] == ["measure_speed", "measure_train_memory"]
    assert calls[0][1]["upsampler"] == "os8" and rows[1]["latency_s"] == 1.0
    assert snapshots == [1, 2]
