"""Streaming (issue #12 items 4 and 8): the static per-frame step, labels, stream.py and the latency bench."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from backbones import IdentityAutoencoder
from diffusion.autoregressive import next_frame, rollout
from diffusion.streaming import DecodeAhead, FrameDecoder, StaticCall, StreamStep
from tests.conftest import compose_train
from tests.helpers.aapt_standin import save_standin, tiny_standin
from utils.stream import LabelControl, load_streamer, stream

pytestmark = pytest.mark.usefixtures("one_thread")  # many calls on a few tokens


def frames(count: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    """Random frames (1, count, 3, size, size)."""
    return torch.randn(1, count, 3, size, size, generator=torch.Generator().manual_seed(seed))


#################################################################################
#                         The static step and decoder                           #
#################################################################################


def test_the_static_step_streams_what_the_rollout_makes_across_the_window_wrap():
    module = tiny_standin()  # window 3 + 1 sink frame: 9 frames wrap the ring twice
    first, noise = frames(1), frames(9, seed=1)
    with torch.no_grad():
        reference = rollout(module.ema, module.diffusion, first, noise)  # growing cache
    step = StreamStep(module.ema, module.diffusion, 1, (3, 8, 8))
    step.start(first)
    streamed = torch.cat([step.step(noise[:, k : k + 1]).clone() for k in range(9)], dim=1)
    torch.testing.assert_close(streamed, reference, atol=1e-5, rtol=1e-5)
    assert step.frames == 9 and reference[:, -1].abs().mean() > 0.1
    step.start(first)  # a new stream on the same buffers gives the same frames
    torch.testing.assert_close(step.step(noise[:, :1]), reference[:, :1], atol=1e-5, rtol=1e-5)


def test_a_label_switch_mid_stream_conditions_the_frames_after_it():
    module = tiny_standin(num_classes=4)
    first, noise = frames(1), frames(6, seed=1)
    cache, previous, expected = module.ema.new_cache(1), first, []
    with torch.no_grad():
        for k in range(6):  # class 1 for frames 1-3, class 3 from frame 4 on
            y = torch.tensor([1 if k < 3 else 3])
            previous = next_frame(module.ema, module.diffusion, cache, previous, noise[:, k : k + 1], y)
            expected.append(previous)
    step = StreamStep(module.ema, module.diffusion, 1, (3, 8, 8))
    step.start(first, y=1)
    streamed = [step.step(noise[:, k : k + 1], y=3 if k == 3 else None).clone() for k in range(6)]
    torch.testing.assert_close(torch.cat(streamed, 1), torch.cat(expected, 1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unconditional"):
        StreamStep(tiny_standin().ema, module.diffusion, 1, (3, 8, 8)).set_label(2)


def test_the_frame_decoder_maps_a_latent_frame_to_uint8_pixels():
    latent = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 3, 1, 1).expand(1, 1, 3, 2, 2)
    pixels = FrameDecoder(IdentityAutoencoder(3, 1), latent)(latent)  # (1, 2, 2, 3)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 2, 2, 3)
    assert pixels[0, 0, 0].tolist() == [0, 128, 255]


def test_the_step_compiles_to_one_graph_that_streams_what_eager_streams(monkeypatch):
    compile_ = torch.compile  # aot_eager: dynamo's tracing and functionalisation, without a C++ compiler
    monkeypatch.setattr(torch, "compile", lambda fn, mode: compile_(fn, backend="aot_eager", fullgraph=True))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # global: earlier tests' compilations count there too
    module = tiny_standin(num_classes=4)
    first, noise = frames(1), frames(8, seed=1)

    def run(step: StreamStep) -> torch.Tensor:
        step.start(first, y=1)
        return torch.cat(
            [step.step(noise[:, k : k + 1], y=3 if k == 5 else None).clone() for k in range(8)], 1
        )

    eager = run(StreamStep(module.ema, module.diffusion, 1, (3, 8, 8)))
    compiled = StreamStep(module.ema, module.diffusion, 1, (3, 8, 8), compile="default")
    torch.testing.assert_close(run(compiled), eager, atol=1e-6, rtol=1e-6)  # fullgraph: no graph break
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, "no recompilation per frame or class"


def test_compile_and_graph_options_are_checked():
    module = tiny_standin()
    with pytest.raises(ValueError, match="compile='fast' must be one of"):
        StreamStep(module.ema, module.diffusion, 1, (3, 8, 8), compile="fast")
    with pytest.raises(ValueError, match="cuda_graph=true needs a CUDA device"):
        StreamStep(module.ema, module.diffusion, 1, (3, 8, 8), cuda_graph=True)
    with pytest.raises(ValueError, match="'reduce-overhead' makes its own CUDA graphs"):
        StaticCall(lambda: None, "reduce-overhead", cuda_graph=True)


#################################################################################
#                          Labels: schedule and stdin                           #
#################################################################################


def test_labels_follow_the_schedule_and_typed_lines_win():
    control = LabelControl({0: 5, 240: "diving"}, names=["A", "Diving", "C", "D", "E", "F"], num_classes=6)
    assert control.schedule == {0: 5, 240: 1}
    assert [control.at(k) for k in (0, 1, 240)] == [5, None, 1]
    for line in ("2\n", "nonsense\n", "17\n", "c\n"):  # an index, no class, out of range, a name
        control.typed.put(line)
    assert control.at(240) == 2, "the last valid typed line wins over the schedule"
    assert control.at(241) is None
    control.listen(io.StringIO("4\n")).join(timeout=10)  # the thread that reads stdin
    assert control.at(242) == 4
    with pytest.raises(ValueError, match="every class must be an index or a name"):
        LabelControl({0: "nonesuch"}, num_classes=3)


#################################################################################
#                                 stream.py                                     #
#################################################################################


def read_mp4(path) -> np.ndarray:
    """Every frame of an mp4, (f, h, w, 3) uint8."""
    import imageio.v2 as imageio

    return np.stack(imageio.mimread(path))


def test_stream_py_writes_the_stream_and_its_latency(tmp_path):
    ckpt = tmp_path / "aapt" / "last.ckpt"
    module = save_standin(ckpt, num_classes=4, data_classes=4)
    image = np.zeros((12, 16, 3), dtype=np.uint8)
    image[:, 2:14] = 255  # white centre square after the center crop: 12 x 12, resized to 8 x 8
    Image.fromarray(image).save(tmp_path / "first.png")
    overrides = [f"ckpt_path={ckpt}", "num_frames=6", f"first_frame={tmp_path / 'first.png'}"]
    cfg = compose_train(tmp_path, [*overrides, "labels={0: 1, 4: 3}", "log_every=3"], config_name="stream")
    summary = stream(cfg, stdin=None)
    assert summary["frames"] == 6 and summary["class_switches"] == [(0, 1), (4, 3)]
    video = read_mp4(tmp_path / "run" / "stream.mp4")
    assert video.shape[:3] == (7, 8, 8), "the first frame, then 6 streamed"
    assert video[0].mean() > 200, "frame 0 is the given image"
    record = json.loads((tmp_path / "run" / "latency.json").read_text())
    assert len(record["ms_per_frame"]) == 6 and record["p99_ms"] >= record["p50_ms"] > 0
    # the same stream from the loaded EMA generator with the same noise
    streamer = load_streamer(str(ckpt), cfg)
    torch.testing.assert_close(
        dict(streamer.generator.state_dict()), dict(module.ema.state_dict()), atol=0, rtol=0
    )


def test_stream_py_starts_from_the_runs_data_by_default(tmp_path):
    ckpt = tmp_path / "aapt" / "last.ckpt"
    save_standin(ckpt)
    cfg = compose_train(tmp_path, [f"ckpt_path={ckpt}", "num_frames=2"], config_name="stream")
    assert stream(cfg)["class_switches"] == [], "unconditional"
    from datamodules import SyntheticVideos

    clips = SyntheticVideos(split="train", num_frames=4, resolution=8, num_videos=8, seed=0)
    first = torch.from_numpy(read_mp4(tmp_path / "run" / "stream.mp4")[0]).permute(2, 0, 1).float()
    errors = [(first - (clips[i]["video"][0] * 0.5 + 0.5) * 255).abs().mean() for i in range(4)]
    assert errors[0] < min(errors[1:]), f"frame 0 is clip 0's first frame (up to mp4 compression): {errors}"


def test_a_module_without_a_generator_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("utils.run.load_module", lambda path, cfg: torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="holds a Linear, which has no backbone, diffusion, autoencoder"):
        load_streamer("x.ckpt", None)


#################################################################################
#                              The latency bench                                #
#################################################################################


def test_the_latency_bench_runs_tiny_on_cpu(tmp_path):
    from bench.stream_latency import main

    record = main(["--tiny", "--device", "cpu", "--modes", "eager", "--json", str(tmp_path / "b.json")])
    (row,) = record["rows"]
    assert row["model"] == "Latte-tiny/2" and row["fps_no_decode"] > 0 and row["fps_decode_overlap"] > 0
    assert row["full_p50_ms@9"] >= row["step_p50_ms@9"] * 0.5 and "p99_drift" in row
    assert json.loads((tmp_path / "b.json").read_text())["torch"] == torch.__version__


#################################################################################
#                    GPU: compiled / graphed steps match eager                  #
#################################################################################


def streamed(step: StreamStep, first: torch.Tensor, noise: torch.Tensor, switch: int) -> torch.Tensor:
    """Frames (b, f, c, h, w) of a stream from ``first``, class 1 then class 3 from frame ``switch`` on."""
    step.start(first, y=1)
    out = [
        step.step(noise[:, k : k + 1], y=3 if k == switch else None).clone() for k in range(noise.shape[1])
    ]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize(
    ("compile_mode", "graph", "dtype"),
    [
        (None, True, torch.float32),
        ("default", True, torch.float32),
        ("reduce-overhead", False, torch.float32),
        (None, True, torch.bfloat16),
        ("default", True, torch.bfloat16),
    ],
)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_compiled_and_graphed_steps_match_the_eager_step(compile_mode, graph, dtype):
    module = tiny_standin(num_classes=4).cuda()
    generator = module.ema.to(dtype)
    first, noise = frames(1).cuda().to(dtype).expand(2, -1, -1, -1, -1), frames(40, seed=1).cuda().to(dtype)
    noise = noise.expand(2, -1, -1, -1, -1).contiguous()
    with torch.no_grad():
        eager = streamed(StreamStep(generator, module.diffusion, 2, (3, 8, 8)), first, noise, 20)
        fast = StreamStep(generator, module.diffusion, 2, (3, 8, 8), compile=compile_mode, cuda_graph=graph)
        out = streamed(fast, first, noise, 20)
        again = streamed(fast, first, noise, 20)  # a second stream on the captured buffers
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), eager.float(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(again, out, atol=0, rtol=0)
    assert fast.frames == 40 and eager[:, -1].float().abs().mean() > 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_graphed_sd_vae_decoder_matches_eager(tmp_path):
    from backbones import DiffusersAutoencoderKL
    from tests.helpers.vae import tiny_vae

    tiny_vae().save_pretrained(tmp_path / "vae")
    vae = DiffusersAutoencoderKL(path=str(tmp_path / "vae"), latent_channels=4, downsample=2).cuda()
    latent = torch.randn(1, 1, 4, 8, 8, device="cuda")
    eager = FrameDecoder(vae, latent)(latent).clone()  # (1, 16, 16, 3)
    for compile_mode in (None, "default"):
        graphed = FrameDecoder(vae, latent, torch.float16, True, compile_mode, cuda_graph=True)
        assert (graphed(latent).int() - eager.int()).abs().max() <= 2, "fp16 channels-last, graphed"


#################################################################################
#                       The README's streaming recipe                           #
#################################################################################


@pytest.mark.slow
def test_readme_streaming_commands_run_as_written(tmp_path):
    """The README block, on a stand-in AAPT run where the block looks; only lengths and sizes shrink."""
    import os
    import re
    import subprocess
    import sys

    from metrics.standins import TinyVideoDetector, save_scripted
    from tests.conftest import ROOT
    from tests.test_readme import _readme_block

    block = _readme_block("python stream.py ckpt_path=$run/")
    assert block[0].startswith("run=$(ls -d logs/aapt_synthetic_gan/runs/")
    save_standin(tmp_path / "logs" / "aapt_synthetic_gan" / "runs" / "x" / "checkpoints" / "last.ckpt")
    save_scripted(TinyVideoDetector(), tmp_path / "weights" / "i3d_torchscript.pt")
    shrink = {
        "num_frames=1440": "num_frames=6",
        "stream_frames=1440": "stream_frames=130",
        "num_videos=256": "num_videos=2",
    }
    evaluation = ["data.resolution=8", "data.dataset.num_videos=8", "data.num_workers=0", "real.num_videos=4"]
    evaluation += ["real.batch_size=2", "real.num_workers=0", "batch_size=2", "progress=false"]
    lines = []
    for line in block:
        for long, short in shrink.items():
            line = line.replace(long, short)
        if line.startswith("python evaluate.py"):
            line += " " + " ".join([*evaluation, f"paths.weights_dir={tmp_path / 'weights'}"])
        lines.append(re.sub(r"^python (\S+\.py)", rf"{sys.executable} {ROOT}/\1", line))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", "-c", "set -e\n" + "\n".join(lines)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    streams = sorted((tmp_path / "logs" / "stream" / "runs").glob("*/stream.mp4"))
    assert len(streams) == 2 and all(len(read_mp4(path)) == 7 for path in streams)
    (record,) = (tmp_path / "logs" / "evaluate" / "runs").glob("*/metrics.json")
    assert set(json.loads(record.read_text())["values"]) == {"fvd_first16", "fvd_last16", "fvd128"}
    assert "| Latte-tiny/2 | eager |" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_latency_bench_runs_tiny_in_every_mode(tmp_path):
    from bench.stream_latency import main

    record = main(["--tiny", "--device", "cuda", "--json", str(tmp_path / "b.json")])
    assert [row["mode"] for row in record["rows"]] == ["eager", "graph", "compile-graph"]
    assert all(row["fps_decode_overlap"] > 0 and row["peak_gib"] > 0 for row in record["rows"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_decoding_ahead_hands_over_every_frame_in_order():
    module = tiny_standin().cuda()
    step = StreamStep(module.ema, module.diffusion, 1, (3, 8, 8), cuda_graph=True)
    decoder = FrameDecoder(module.autoencoder, step.previous, cuda_graph=True)
    first, noise = frames(1).cuda(), frames(30, seed=1).cuda()
    step.start(first)
    expected = [decoder(step.step(noise[:, k : k + 1])).cpu() for k in range(30)]  # serial: (1, 8, 8, 3)
    step.start(first)
    ahead, handed = DecodeAhead(decoder), []
    for k in range(30):
        handed += [pixels.clone() for pixels in ahead.push(step.step(noise[:, k : k + 1]))]
        assert len(handed) == k, "each frame reaches the host one step late"
    handed += [pixels.clone() for pixels in ahead.finish()]
    assert len(handed) == 30 and all(torch.equal(a, b) for a, b in zip(handed, expected))
