# The GPU main job's recipe, sourced by README command (a) on a GPU (tools/run_main_job.sh) and by the lent
# machine's train stage (tools/gpu_checks.sh), so that both train the same job; the environment overrides each.
# ResNet-50 (cfgs/shapes_gpu.yml), its backbone first pretrained on the object crops: 1200 AdamW steps of 128
# crops (docs/TRAINING.md: 600 left it underfit). Then --epochs 100 as a bound only: --time_budget runs the epochs
# that fit and decays the lr for the last quarter of them. lr 0.08 for 8 images is four times the CPU's 0.02 for
# one (docs/TRAINING.md: in a CPU trial at --bs 8, lr 0.02 scored 0.08 mAP below lr 0.08, and lr 0.16 no better).
# --warmup 200 ramps the lr over the first 200 iterations (about one epoch): without it the ResNet-50's pooled
# layer4 features died in the first 20 iterations of a CPU stand-in, and lr 0.08 gave NaN (docs/TRAINING.md).
NET=${NET:-res50}
PRETRAIN_ARGS=${PRETRAIN_ARGS:-"--bs 128 --steps 1200 --lr 0.004"}
TRAIN_ARGS=${TRAIN_ARGS:-"--amp --bs 8 --nw 8 --lr 0.08 --warmup 200 --epochs 100"}
