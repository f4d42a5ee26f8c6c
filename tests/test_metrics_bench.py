"""bench/fvd_speed.py runs end to end on the CPU at a tiny size (the GPU figure is measured on a device)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow  # scripts the full I3D and runs it at 224 px on the CPU
def test_fvd_speed_bench_smoke_run_on_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fvd_speed.py"), "--device", "cpu", "--num-videos", "2"]
        + ["--batch-size", "1", "--resolution", "32", "--warmup", "0", "--json", str(tmp_path / "rows.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [row["route"] for row in rows] == ["I3DTorchScript (scripted)", "I3DVideoGPT (eager)"]
    assert all(row["videos"] == 2 and row["videos_per_s"] > 0 for row in rows)
    assert "| I3DTorchScript (scripted) | 2 | 1 |" in result.stdout
