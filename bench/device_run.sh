#!/usr/bin/env bash
# One visit to the lent GPU: GPU tests, a longer quickstart, the backbone and train.py-loop throughput, FVD speed.
# Run from the repo root on the device with .whl carried (../shared/tools/device-wheels.sh data: decord too; the
# sampler-quality section also needs torch-fidelity's wheel: pip download torch-fidelity --no-deps -d .whl).
set -uo pipefail
wheels=/tmp/site/.installed-$(ls .whl | sha256sum | cut -c1-16)   # once per machine and set of wheels, under
(  # a lock: two sections may start side by side, one per GPU
  flock 9; [[ -e $wheels ]] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl && touch "$wheels"; }
) 9>/tmp/site.lock && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
what=${*:-tests quickstart throughput loop variants fvd}   # sections: tests quickstart throughput loop variants fvd stream-tests stream-eager stream-compiled scaling-latte ddp-tuning scaling-fsdp scaling-pair twonodes preempt profile-4gpu fsdp-gather sampler-quality scaling-compiled attention float8 evaluate-wall loss-curve compile-modes fp8-sampling eager-profile loss-floor kernel-guards syncs host-ab
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, hydra, diffusers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'diffusers', diffusers.__version__)"

if [[ $what == *tests* ]]; then
echo "== GPU tests"
python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -5
fi

if [[ $what == *quickstart* ]]; then
echo "== quickstart model on the GPU, 5000 steps, batch 32, bf16-mixed"
start=$(date +%s)
python3 train.py trainer=gpu logger=csv trainer.max_steps=5000 data.batch_size=32 data.num_workers=6 \
  trainer.enable_progress_bar=false trainer.val_check_interval=2500 callbacks.model_checkpoint.every_n_train_steps=2500 \
  callbacks.video_sampler.every_n_steps=2500 callbacks.video_sampler.num_videos=16 paths.log_dir=/tmp/logs 2>&1 \
  | grep -vE "Warning|warn|^\s*$" | tail -5
echo "quickstart_gpu_wall_s $(( $(date +%s) - start ))"
run=$(ls -d /tmp/logs/quickstart/runs/*/ | tail -1)
cp "$run"/loss_curve.png "$OUT"/gpu_loss_curve.png; cp "$run"/samples/step_0005000.gif "$OUT"/gpu_samples_ddim25_5000.gif
tail -3 "$run"/csv/version_0/metrics.csv
python3 sample.py ckpt_path="$run"/checkpoints/last.ckpt num_videos=16 batch_size=16 paths.log_dir=/tmp/logs 2>&1 | tail -1
cp "$(ls -d /tmp/logs/sample/runs/*/ | tail -1)"/grid.gif "$OUT"/gpu_samples_ddpm250_5000.gif
fi

if [[ $what == *throughput* ]]; then
echo "== training throughput (Latte-XL/2, 16x4x32x32, batch 5, bf16-mixed)"
python3 bench/train_throughput.py --json "$OUT"/train_throughput.json 2>&1 | grep -vE "Warning|warn"
fi

if [[ $what == *loop* ]]; then
echo "== the train.py loop at the paper's token count (Latte-XL/2, batch 5, bf16-mixed), eager vs module.compile"
python3 bench/train_loop.py --json "$OUT"/train_loop.json 2>&1 | grep -E "^\|"
fi

if [[ $what == *variants* ]]; then
echo "== parameters, FLOPs and H200/H100 step times of the Latte variants and axes"
python3 bench/variant_flops.py --time 2>&1 | grep -E "^\|"
fi

if [[ $what == *fvd* ]]; then
echo "== FVD feature extraction (2048 videos x 16 frames at 256^2, random-weight I3D)"
python3 bench/fvd_speed.py --json "$OUT"/fvd_speed.json 2>&1 | grep -vE "Warning|warn"
fi

# streaming (issue #12): three sections, each well inside one 10-minute device command
if [[ $what == *stream-tests* ]]; then
echo "== streaming GPU tests: compiled / CUDA-graphed step and decoder against eager"
python3 -m pytest -q -m gpu tests/test_stream.py -p no:cacheprovider 2>&1 | tail -5
fi

if [[ $what == *stream-eager* ]]; then
echo "== 1,440-frame stream latency, Latte-B/2 and XL/2, eager and CUDA graphs"
python3 bench/stream_latency.py --modes eager,graph --json "$OUT"/stream_latency_eager_graph.json 2>&1 | grep -vE "Warning|warn"
fi

if [[ $what == *stream-compiled* ]]; then
echo "== 1,440-frame stream latency, Latte-B/2 and XL/2, torch.compile + CUDA graphs"
python3 bench/stream_latency.py --modes compile-graph --json "$OUT"/stream_latency_compiled.json 2>&1 | grep -vE "Warning|warn"
fi

if [[ $what == *scaling-latte* ]]; then
echo "== DDP scaling of the train.py loop, Latte-XL/2, 1/2/4 GPUs, eager and compiled"
python3 bench/scaling.py --part latte --steps 22 --warmup 8 --timeout 200 --json "$OUT"/scaling_latte.json
fi

if [[ $what == *scaling-fsdp* ]]; then
echo "== FSDP, Latte-XL/2, 2/4 GPUs against one GPU on the same machine, eager and compiled"
python3 bench/scaling.py --part fsdp --gpus 1 2 4 --steps 22 --warmup 8 --timeout 150 --json "$OUT"/scaling_fsdp.json
fi

if [[ $what == *scaling-pair* ]]; then
echo "== the AAPT generator + discriminator pair (XL/2), DDP vs FSDP (resharded or kept gathered), 2/4 GPUs"
# three rows of ~100 s per GPU count, so one count a visit: PAIR_GPUS=4 for the 4-GPU rows
python3 bench/scaling.py --part pair --gpus ${PAIR_GPUS:-2} --timeout 120 --json "$OUT"/scaling_pair.json
fi

if [[ $what == *twonodes* ]]; then
echo "== two nodes on one host: torchrun --nnodes=2 --nproc-per-node=1 (c10d), one GPU each, NCCL"
dir=/tmp/twonodes; rm -rf $dir
args="backbone=latte_tiny trainer=ddp trainer.devices=1 logger=csv trainer.max_steps=20 paths.log_dir=$dir/logs"
args="$args +callbacks.digest._target_=tests.helpers.probes.WeightsDigestProbe +callbacks.digest.dirpath=$dir/digests"
for node in 0 1; do
  CUDA_VISIBLE_DEVICES=$node timeout 150 python3 -m torch.distributed.run --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d \
    --rdzv-endpoint=localhost:29511 --rdzv-id=gpu2nodes train.py $args > $dir.node$node.log 2>&1 &
done
wait
{ grep -h "GLOBAL_RANK\|Trainer.fit\|Error" $dir.node0.log $dir.node1.log | head -6
  cat $dir/digests/rank0.json; echo; cat $dir/digests/rank1.json; echo
  ls $dir/logs/quickstart/runs/ $dir/logs/quickstart/runs/*/checkpoints; } 2>&1 | tee "$OUT"/twonodes.txt
cp $dir.node0.log $dir.node1.log "$OUT"/
fi

if [[ $what == *ddp-tuning* ]]; then
echo "== compiled DDP, Latte-XL/2, 2 and 4 GPUs: block graphs cut at the 25 MB buckets (the default leaves them whole)"
python3 bench/scaling.py --part ddp-tuning --gpus 2 4 --steps 22 --warmup 8 --timeout 150 \
  --variants trainer.strategy.split_compiled_graphs=true --json "$OUT"/ddp_split.json
fi

if [[ $what == *preempt* ]]; then
echo "== pre-emption on 2 GPUs (NCCL, bf16-mixed): SIGTERM at step 4, the same command again, against a full run"
python3 -m pytest -q -m gpu tests/test_resume.py -p no:cacheprovider 2>&1 | tee "$OUT"/preempt.txt | tail -25
fi

if [[ $what == *profile-4gpu* ]]; then
echo "== where a 4-GPU step goes: FSDP eager + compiled and DDP compiled, Latte-XL/2, 3 profiled steps each"
python3 bench/scaling.py --part fsdp --gpus 4 --steps 20 --warmup 8 --timeout 170 --profile "$OUT"/profiles \
  --json "$OUT"/profile_fsdp.json
python3 bench/scaling.py --part latte --gpus 4 --modes compiled --steps 20 --warmup 8 --timeout 150 \
  --profile "$OUT"/profiles --json "$OUT"/profile_ddp.json
fi

if [[ $what == *fsdp-gather* ]]; then
echo "== compiled Latte-XL/2 on 4 GPUs: FSDP gathering bf16 weights, FSDP gathering fp32, DDP (one machine)"
python3 bench/scaling.py --part fsdp --gpus 4 --modes compiled --steps 20 --warmup 8 --timeout 110 \
  --overrides trainer.strategy.param_dtype=bfloat16 --json "$OUT"/fsdp_bf16_gather.json
python3 bench/scaling.py --part fsdp --gpus 4 --modes compiled --steps 20 --warmup 8 --timeout 100 \
  --json "$OUT"/fsdp_fp32_gather.json
python3 bench/scaling.py --part latte --gpus 4 --modes compiled --steps 20 --warmup 8 --timeout 90 \
  --json "$OUT"/ddp_compiled.json
fi

if [[ $what == *sampler-quality* ]]; then
echo "== issue #14 item 3: Latte-S/2 on synthetic 16 x 32² clips (pixel space, the paper's 16 x 256 tokens), then"
echo "== FVD/FID/KID of 2048 videos from DDPM-250, DDIM-50/25, DPM-Solver++-20/10 (random-weight detectors)"
# the rows reach $OUT one by one: a sampler cut off by the command's end loses only itself. Training (150 s) and
# DDPM-250 (about 460 s for S/2 on an H100, visit J) do not fit one 10-minute command with the others, so run three
# commands on one warm machine: SQ_SAMPLERS=none (train only), then SQ_TRAIN_S=0 (keep the run) with
# SQ_SAMPLERS=ddpm:250, then SQ_TRAIN_S=0 with the fast samplers; the later ones reuse the run, the seeded random
# detectors and the cached real statistics, and their FVDs compare with the DDPM-250 command's row.
dir=/tmp/sampler_quality
if [[ ${SQ_TRAIN_S:-150} != 0 ]]; then
rm -rf $dir
timeout ${SQ_TRAIN_S:-150} python3 train.py experiment=latte_synthetic backbone=latte_S_2 autoencoder=identity \
  data.resolution=32 data.num_frames=16 data.batch_size=32 data.num_workers=8 module.compile=true logger=csv \
  trainer.max_steps=${SQ_STEPS:-10000} trainer.limit_val_batches=0 trainer.enable_progress_bar=false \
  '~callbacks.video_sampler' callbacks.model_checkpoint.every_n_train_steps=500 hydra.run.dir=$dir/run 2>&1 | tail -3
tail -2 $dir/run/csv/version_0/metrics.csv
fi
[[ ${SQ_SAMPLERS:-} == none ]] || python3 bench/sampler_quality.py $dir/run/checkpoints/last.ckpt --random-detectors --compile --batch-size 64 \
  --samplers ${SQ_SAMPLERS:-ddpm:250 dpm_solver:10 dpm_solver:20 ddim:25 ddim:50} \
  --json "$OUT"/sampler_quality.json --overrides data.resolution=32 2>&1 | grep -E "^\||^device|Error"
fi

if [[ $what == *scaling-compiled* ]]; then
echo "== compiled DDP scaling of the train.py loop, Latte-XL/2, 1/2/4 GPUs of one machine (issue #15 item 1's target)"
python3 bench/scaling.py --part latte --gpus 1 2 4 --modes compiled --steps 30 --warmup 10 --timeout 150 \
  --json "$OUT"/scaling_compiled.json
fi

if [[ $what == *attention* ]]; then
echo "== SDPA kernels for Latte-XL/2's attention within frames (256 tokens) and across frames (16), then the whole step"
python3 bench/attention_backends.py --step-backends ${ATTN_STEP_BACKENDS:-model cudnn efficient} \
  --json "$OUT"/attention_backends.json 2>&1 | grep -E "^\||^device"
fi

if [[ $what == *float8* ]]; then
echo "== module.float8=true (torchao tensorwise float8 qkv/fc1/fc2) against bf16, the compiled train.py loop, XL/2"
python3 bench/train_loop.py --modes compiled --steps 40 --warmup 15 --json "$OUT"/float8_off.json 2>&1 | grep -E "^\|"
python3 bench/train_loop.py --modes compiled --steps 40 --warmup 15 --overrides module.float8=true \
  --json "$OUT"/float8_on.json 2>&1 | grep -E "^\||Error|error" | head -20
python3 -m pytest -q -m gpu tests/test_gpu.py -k float8 -p no:cacheprovider 2>&1 | tail -5
fi

if [[ $what == *evaluate-wall* ]]; then
gpus=${EW_GPUS:-1}
echo "== issue #14 item 4: evaluate() of 2048 videos of 16 x 256² on $gpus GPU(s): random-weight Latte-XL/2, SD VAE"
echo "== (bf16) and detectors, ${EW_SAMPLERS:-dpm_solver:20}, compiled; the real reference is cached before the clock"
start=$(date +%s)   # 1- and 2-GPU commands of one visit share the workdir: the real reference is made once
torchrun --nproc-per-node=$gpus bench/sampler_quality.py --random-model XL/2 --random-detectors --compile \
  --batch-size 32 --samplers ${EW_SAMPLERS:-dpm_solver:20} --workdir /tmp/evaluate_wall \
  --json "$OUT"/evaluate_wall_${gpus}gpu.json --overrides autoencoder.torch_dtype=bfloat16 2>&1 \
  | grep -E "^\||^device|Error"
echo "process wall s (with the random files and the reference when first made): $(( $(date +%s) - start ))"
fi

if [[ $what == *loss-curve* ]]; then
mode=${LC_MODE:-eager}   # two warm commands: LC_MODE=eager (today's numerics, ~9 min), then LC_MODE=compiled
echo "== issue #14 item 1: 2,000 steps of the train.py loop, Latte-XL/2 at the paper's shape, $mode; the compiled"
echo "== run's loss curve against the eager run's (largest gap of 100-step means; the target is 0.5%)"
ref=/tmp/loss_curve_eager.json   # the compiled run side by side (another GPU) starts without it: compare later
[[ $mode == eager || ! -e $ref ]] || reference="--reference $ref"
python3 bench/train_loop.py --steps 2000 --warmup 20 --modes $mode ${reference:-} --json /tmp/loss_curve_$mode.json \
  2>&1 | grep -E "^\||^device|Error"
cp /tmp/loss_curve_*.json "$OUT"/
fi

if [[ $what == *compile-modes* ]]; then
echo "== issue #14 item 1: the compiled train.py loop (Latte-XL/2, paper's shape), torch.compile's default mode"
echo "== against module.compile_mode=max-autotune-no-cudagraphs (Triton GEMM templates, fused epilogues)"
python3 bench/train_loop.py --modes compiled --steps 60 --warmup 15 --json "$OUT"/compile_default.json 2>&1 \
  | grep -E "^\||^device|Error"
python3 bench/train_loop.py --modes compiled --steps 60 --warmup 15 --json "$OUT"/compile_autotune.json \
  --overrides module.compile_mode=max-autotune-no-cudagraphs 2>&1 | grep -E "^\||^device|Error"
echo "== and the default mode with inductor's coordinate-descent tuning of its fused Triton kernels (an env var)"
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 python3 bench/train_loop.py --modes compiled --steps 60 --warmup 15 \
  --json "$OUT"/compile_coordinate_descent.json 2>&1 | grep -E "^\||^device|Error"
fi

if [[ $what == *fp8-sampling* ]]; then
echo "== issue #14 item 2: sampler.precision=float8 (rowwise float8 qkv/fc1/fc2) against bf16, Latte-XL/2, batch 32"
python3 bench/sample_speed.py --batches 32 --configs "bf16 cast + compile" "float8 + compile" "float8" \
  --json "$OUT"/sample_speed_float8.json 2>&1 | grep -E "^\||^device|Error"
python3 -m pytest -q -m gpu tests/test_gpu.py -k float8_sampling -p no:cacheprovider 2>&1 | tail -3
fi

if [[ $what == *eager-profile* ]]; then
echo "== issue #14 item 1: where the eager Latte-XL/2 step goes (the official code's eager rate is the bar)"
python3 bench/train_profile.py --eager --backends "" --steps 8 --json "$OUT"/train_profile_eager.json 2>&1 \
  | grep -E "^\||step|^device|Error"
fi

if [[ $what == *loss-floor* ]]; then
backend=${LF_BACKEND:-model}   # two GPUs side by side: CUDA_VISIBLE_DEVICES=0 (model), =1 LF_BACKEND=efficient
echo "== issue #14 item 1: the loss-curve check's noise floor: the eager run again, SDPA across frames: $backend;"
echo "== compare each with the earlier eager run offline (bench.train_loop.curve_deviation): same seed, same data"
python3 bench/train_loop.py --steps ${LF_STEPS:-1800} --warmup 20 --modes eager --time-backend $backend \
  --json "$OUT"/loss_floor_$backend.json 2>&1 | grep -E "^\||^device|Error"
fi

if [[ $what == *fused-frames* ]]; then
echo "== issue #14 item 1: the fused Triton attention across frames (backbones/frame_attention.py): GPU tests, then"
echo "== its fwd + bwd against SDPA's kernels at Latte-XL/2's shape, and the whole step against the math kernel"
python3 -m pytest -q -m gpu tests/test_gpu.py -k "fused or compiled_bf16_training" -p no:cacheprovider 2>&1 | tail -3
python3 bench/attention_backends.py --backends model cudnn math --step-backends model math \
  --json "$OUT"/attention_fused.json 2>&1 | grep -E "^\||^device|Error"
fi

if [[ $what == *kernel-guards* ]]; then
echo "== the fused attention's GPU tests (bf16 and fp16, eager and compiled; the 2-GPU device test where 2 are"
echo "== visible), then where the compiled train.py loop's step goes beyond the bare step's (3 profiled steps)"
python3 -m pytest -q -m gpu tests/test_gpu.py -k fused -p no:cacheprovider 2>&1 | tail -3
python3 bench/train_loop.py --modes compiled --steps 40 --warmup 15 --profile "$OUT"/loop_profile \
  --syncs "$OUT"/loop_syncs --json "$OUT"/loop_profiled.json 2>&1 | grep -E "^\||^device|Error"
fi

if [[ $what == *syncs* ]]; then
echo "== where the compiled train.py loop waits for the GPU with train.py's own progress bar and loss curve"
python3 bench/train_loop.py --modes compiled --steps 60 --warmup 15 --syncs "$OUT"/default_syncs \
  --json "$OUT"/loop_default_callbacks.json --overrides trainer.enable_progress_bar=true \
  +callbacks.loss_curve._target_=callbacks.LossCurve +callbacks.loss_curve.path=/tmp/loss_curve.png \
  2>&1 | grep -E "^\||^device|Error"
fi

if [[ $what == *host-ab* ]]; then  # HOST_AB_OLD: a tree of the code before, with this bench/train_loop.py
echo "== host waits of the compiled train.py loop: the code before (${HOST_AB_OLD:-old_head}) against this, each"
echo "== with the bench's callbacks, then with train.py's progress bar and loss curve too (a census of 3 steps)"
python3 -m pytest -q -m gpu tests/test_gpu.py -k host_wait -p no:cacheprovider 2>&1 | tail -3
for tree in "${HOST_AB_OLD:-old_head}" .; do
  name=$(basename "$(realpath "$tree")")
  for callbacks in bench train.py; do
    extra=(); [[ $callbacks == train.py ]] && extra=(trainer.enable_progress_bar=true
      +callbacks.loss_curve._target_=callbacks.LossCurve +callbacks.loss_curve.path=/tmp/loss_curve.png)
    echo "-- $name, $callbacks callbacks"
    (cd "$tree" && PYTHONPATH=/tmp/site:$PWD python3 bench/train_loop.py --modes compiled --steps 60 --warmup 15 \
      --syncs "$OUT"/syncs_${name}_$callbacks --json "$OUT"/loop_${name}_$callbacks.json --overrides "${extra[@]}" \
      2>&1 | grep -E "^\||Error")
  done
done
fi
