#!/usr/bin/env bash
# The GPU checks in one prepared run, for a machine that has a CUDA GPU and its own PyTorch but no package
# registry (e.g. a lent H100): build the ops there, run the CUDA tests and the benchmarks, train and test the GPU
# main job. Logs and results go to output/gpu_checks; when $OUT is set (the lent machine's folder of files that
# come back, at most 8 files), summary.txt, the benchmark json files and gpu_checks_logs.tgz are copied there.
#
#   bash tools/gpu_checks.sh                  # stages "ops probe bench": build, CUDA op tests, bench_ops,
#                                             # the main job's speed and the TRAIN_ARGS to use, bench
#   bash tools/gpu_checks.sh ops              # build, CUDA tests of the ops and the model, bench_ops
#   bash tools/gpu_checks.sh probe            # build, 80 iterations of the GPU main job: images/s, and the
#                                             # --epochs / --lr_decay_step that fill TRAIN_SECONDS
#   bash tools/gpu_checks.sh train            # build, the GPU main job (cfgs/shapes_gpu.yml), test_net
#
# Python packages the machine lacks (easydict and pycocotools on the lent H100s) travel as wheels in .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl easydict==1.14 pycocotools==2.0.11
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0, the H100/H200); for the train stage TRAIN_ARGS, NET and
# TRAIN_SECONDS (default 390: training then stops with a checkpoint, which is tested).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STAGES=${*:-ops probe bench}
for s in $STAGES; do  # a typo fails here, not after the build
  case $s in ops|bench|probe|train) ;; *) echo "unknown stage '$s'; expected ops, bench, probe or train" >&2; exit 2 ;; esac
done
LOGS=output/gpu_checks
rm -rf "$LOGS"
mkdir -p "$LOGS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

stage() {  # stage NAME COMMAND...: runs the command, its output to the screen and $LOGS/NAME.log
  local name=$1; shift
  local start; start=$(date +%s)
  echo "== $name: $*"
  "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$LOGS/summary.txt"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

finish() {  # what comes back from a lent machine: the summary, the json results, every log in one archive
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$LOGS/summary.txt" "$LOGS"/*.json "$OUT"/ 2>/dev/null
    tar czf "$OUT/gpu_checks_logs.tgz" --exclude=./models --exclude=./probe_models -C "$LOGS" .  # not the checkpoints
  fi
}
trap finish EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/summary.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee -a "$LOGS/summary.txt"

NET=${NET:-res50}
TRAIN_SECONDS=${TRAIN_SECONDS:-390}  # one command runs 600 s at most: build, data, train, two tests
TRAIN_ARGS=${TRAIN_ARGS:-"--amp --bs 8 --nw 8 --lr 0.02 --epochs 12 --lr_decay_step 9"}

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
stage build "$PY" setup.py -q build_ext --inplace || exit 1
stage built "$PY" -c "import lib.model.roi_layers as r, sys; print('CUDA kernels:', r.built_with_cuda()); \
sys.exit(0 if r.built_with_cuda() else 1)" || exit 1

for s in $STAGES; do
  case $s in
    ops)
      stage cuda_tests "$PY" -m pytest -q -rs tests/model/roi_layers tests/model/faster_rcnn
      stage bench_ops "$PY" tools/bench_ops.py --device cuda --json "$LOGS/bench_ops.json"
      ;;
    bench)
      stage bench "$PY" tools/bench.py --device cuda --json "$LOGS/bench.json"
      ;;
    probe)
      # the main job's training speed, so that the train stage's schedule, lr decay included, fits TRAIN_SECONDS
      # (the time limit would cut a longer one, perhaps before its decay; a shorter one leaves time unused)
      stage data "$PY" tools/make_shapes_voc.py || continue
      stage probe "$PY" trainval_net.py --dataset shapes --net "$NET" --weights none --cfg cfgs/shapes_gpu.yml \
        --cuda --s 9 --save_dir "$LOGS/probe_models" $TRAIN_ARGS --disp_interval 20 --epochs 1 --max_iters 80 \
        --checkpoint_interval 0 || continue  # after TRAIN_ARGS: the last of a repeated flag wins
      "$PY" tools/probe_schedule.py "$LOGS/probe.log" "$TRAIN_SECONDS" "$TRAIN_ARGS" | tee -a "$LOGS/summary.txt"
      ;;
    train)
      stage data "$PY" tools/make_shapes_voc.py || continue
      # SIGTERM at the limit: the trainer saves a checkpoint after the current iteration, and that one is tested
      stage train timeout -s TERM "$TRAIN_SECONDS" "$PY" trainval_net.py --dataset shapes --net "$NET" --weights none \
        --cfg cfgs/shapes_gpu.yml --cuda --s 1 --save_dir "$LOGS/models" --disp_interval 50 $TRAIN_ARGS
      rc=$?
      if [ "$rc" -eq 124 ]; then
        echo "== train: stopped at the $TRAIN_SECONDS s limit; its last checkpoint is tested" | tee -a "$LOGS/summary.txt"
      elif [ "$rc" -ne 0 ]; then
        continue
      fi
      ckpt=$(ls -t "$LOGS/models/$NET/shapes"/faster_rcnn_1_*.pth | head -n 1)
      IFS=_ read -r _ _ sess ep step <<< "$(basename "$ckpt" .pth)"
      stage test "$PY" test_net.py --dataset shapes --net "$NET" --cfg cfgs/shapes_gpu.yml --cuda --load_dir "$LOGS/models" \
        --checksession "$sess" --checkepoch "$ep" --checkpoint "$step" --bn_stats running
      grep -h -m1 'mAP (the dataset' "$LOGS/test.log" | sed 's/^/running BN statistics: /' | tee -a "$LOGS/summary.txt"
      # BatchNorm trained from scratch on small batches can depend on per-image statistics (docs/TRAINING.md:
      # a --bs 2 CPU model scored 0.155 on them and 0.077 on its running averages), so both are measured
      stage test_bn_batch "$PY" test_net.py --dataset shapes --net "$NET" --cfg cfgs/shapes_gpu.yml --cuda \
        --load_dir "$LOGS/models" --checksession "$sess" --checkepoch "$ep" --checkpoint "$step" --bn_stats batch
      grep -h -m1 'mAP (the dataset' "$LOGS/test_bn_batch.log" | sed 's/^/per-image BN statistics: /' \
        | tee -a "$LOGS/summary.txt"
      ;;
  esac
done
exit $status
