#!/usr/bin/env bash
# README command (a), the main job on the embedded synthetic dataset: set up the environment and build the ops,
# generate the synthetic VOC-format shapes set, train, test (VOC07 mAP), run the demo.
# On a machine with a GPU (CUDA visible to torch) it uses cfgs/shapes_gpu.yml with --cuda (ResNet-50 at scale 600);
# else cfgs/shapes_cpu.yml (ResNet-18 at scale 256). Either backbone is first pretrained on the training set's
# object crops (no ImageNet weights can be had here; tools/pretrain_backbone.py), then fine-tuned as a detector
# from those weights. WEIGHTS=none trains from scratch instead (BatchNorm trained, no block fixed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. tools/setup_env.sh

if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  . tools/main_job_gpu.sh  # NET, PRETRAIN_ARGS, TRAIN_ARGS: the recipe tools/gpu_checks.sh trains too
  CFG=${CFG:-cfgs/shapes_gpu.yml}; DEV=--cuda; DEMO_THRESH=${DEMO_THRESH:-0.5}
  WEIGHTS=${WEIGHTS:-data/pretrained_model/resnet50_shapes.pth}
  # ten minutes of training in all (the backbone's pretraining included): the trainer's --time_budget runs the
  # epochs that fit in what the pretraining leaves
  TRAIN_SECONDS=${TRAIN_SECONDS-600}
else
  NET=${NET:-res18}; CFG=${CFG:-cfgs/shapes_cpu.yml}; DEV=; DEMO_THRESH=${DEMO_THRESH:-0.5}
  # (add --val to PRETRAIN_ARGS for the classifier's accuracy on the test set's crops: about 20 s more here)
  WEIGHTS=${WEIGHTS:-data/pretrained_model/resnet18_shapes.pth}; PRETRAIN_ARGS=${PRETRAIN_ARGS:-}
  TRAIN_ARGS=${TRAIN_ARGS:-"--bs 1 --nw 1 --epochs 3 --max_iters 1300 --lr 0.02 --lr_decay_step 2 --checkpoint_interval 0"}
  # what the CPU can do, asked of torch once (an import of torch costs about 3 s here): native bf16, AVX-512
  probe=$(python -c \
    "from lib.model.utils.script_utils import cpu_has_avx512 as a, cpu_has_native_bf16 as b; print(int(b()), int(a()))")
  read -r NATIVE_BF16 AVX512 <<< "$probe"
  # bf16 autocast for pretraining, training and test where the CPU computes bf16 natively (AVX512-BF16 or AMX):
  # a third off every step there; elsewhere float32. AMP= (empty) keeps float32 everywhere.
  if [ "${AMP-auto}" = auto ]; then
    AMP=; [ "$NATIVE_BF16" != 1 ] || AMP=--amp
    if [ -z "$AMP" ]; then
      echo "== this CPU has no native bf16 (AVX512-BF16 or AMX): the job runs in float32, slower than the bf16" \
           "it was tuned with (1016 s on a 2-core Ice Lake Xeon VM against 637 s on an AVX512-BF16 EPYC; README)"
    fi
  fi
  # channels_last (cfg.CHANNELS_LAST) where the job runs in float32 on an AVX-512 CPU, the case it was measured
  # faster in (docs/BENCHMARKS.md); CHANNELS_LAST=True or False decides it by hand
  if [ "${CHANNELS_LAST-auto}" = auto ]; then
    CHANNELS_LAST=False
    if [ -z "$AMP" ] && [ "$AVX512" = 1 ]; then
      CHANNELS_LAST=True
    fi
  fi
fi
[ "${AMP-auto}" != auto ] || AMP=  # on a GPU, --amp is in TRAIN_ARGS
[ "${CHANNELS_LAST-auto}" != auto ] || CHANNELS_LAST=False  # the GPU recipe: the original's layout (unmeasured)
CL_SET=(--set CHANNELS_LAST "$CHANNELS_LAST")  # last on each command line (--set takes the rest)
TRAIN_SECONDS=${TRAIN_SECONDS-}  # empty (the CPU's default): TRAIN_ARGS's own schedule, no time budget
SESSION=1
SAVE_DIR=${SAVE_DIR:-models}
LOG_DIR=output/main_job
mkdir -p "$LOG_DIR"

echo "== generating the synthetic shapes dataset (data/VOCdevkit_shapes, skipped when present)"
python tools/make_shapes_voc.py

start=$(date +%s)
if [ "$WEIGHTS" != none ]; then
  echo "== pretraining the $NET backbone on object crops of shapes_trainval (writes $WEIGHTS)"
  # shellcheck disable=SC2086
  python tools/pretrain_backbone.py --dataset shapes --net "$NET" --cfg "$CFG" --output "$WEIGHTS" $PRETRAIN_ARGS \
    $DEV $AMP "${CL_SET[@]}" 2>&1 | tee "$LOG_DIR/pretrain.log"
fi
BUDGET_FLAG=()
if [ -n "$TRAIN_SECONDS" ]; then
  budget=$(( TRAIN_SECONDS - ($(date +%s) - start) ))
  if [ "$budget" -lt 60 ]; then  # a slow machine: the pretraining took (nearly) all of it
    echo "== the pretraining left $budget of TRAIN_SECONDS=$TRAIN_SECONDS s; training for 60 s instead"
    budget=60
  fi
  BUDGET_FLAG=(--time_budget "$budget")
fi
SCRATCH=()  # the yml's fine-tuning rules (frozen BatchNorm, fixed blocks) would freeze random weights
[ "$WEIGHTS" != none ] || SCRATCH=(TRAIN.BN_TRAIN True RESNET.FIXED_BLOCKS 0)
echo "== training $NET on shapes_trainval ($CFG, weights: $WEIGHTS) $DEV $AMP ${CL_SET[*]}"
# shellcheck disable=SC2086
python trainval_net.py --dataset shapes --net "$NET" --weights "$WEIGHTS" --cfg "$CFG" --s $SESSION \
  --save_dir "$SAVE_DIR" --disp_interval 50 $TRAIN_ARGS ${BUDGET_FLAG[@]+"${BUDGET_FLAG[@]}"} $DEV $AMP \
  "${CL_SET[@]}" ${SCRATCH[@]+"${SCRATCH[@]}"} 2>&1 \
  | tee "$LOG_DIR/train.log"
train_s=$(( $(date +%s) - start ))

# the last checkpoint written: faster_rcnn_<session>_<epoch>_<step>.pth
ckpt=$(ls -t "$SAVE_DIR/$NET/shapes"/faster_rcnn_${SESSION}_*.pth | head -n 1)
base=$(basename "$ckpt" .pth); IFS=_ read -r _ _ s e step <<< "$base"
echo "== testing $ckpt on shapes_test"
start=$(date +%s)
python test_net.py --dataset shapes --net "$NET" --cfg "$CFG" --load_dir "$SAVE_DIR" \
  --checksession "$s" --checkepoch "$e" --checkpoint "$step" $DEV $AMP "${CL_SET[@]}" 2>&1 | tee "$LOG_DIR/test.log"
test_s=$(( $(date +%s) - start ))

echo "== demo on a few shapes test images (writes images/*_det.jpg)"
python tools/demo.py --dataset shapes --net "$NET" --cfg "$CFG" --load_dir "$SAVE_DIR" \
  --checksession "$s" --checkepoch "$e" --checkpoint "$step" --thresh "$DEMO_THRESH" $DEV "${CL_SET[@]}"

echo "== main job done: train ${train_s} s (backbone pretraining included), test ${test_s} s; $(grep -m1 'mAP (the dataset' "$LOG_DIR/test.log" || true)"
