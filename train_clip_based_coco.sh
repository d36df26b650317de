#!/bin/sh
# MS-COCO raw images, ESL-CLIP on CLIP ViT-B/16: the released recipe config/recipes/${HEAD}_clip_coco.json.
#   sh train_clip_based_coco.sh             # ESL-H;  HEAD=esl_a for ESL-A, HEAD=cosine for plain CLIP
# Runs from any folder; relative paths are taken from where you stand.
# Environment: IMAGE_ROOT (holds train2014/ and val2014/), ANN_PATH (folder of train_coco.json, dev_coco.json,
# testall_coco.json), CLIP_PATH, OUTPUT_DIR. Extra arguments override the recipe.
set -e
exec ${PYTHON:-python} "$(dirname "$0")/train.py" --recipe "${HEAD:-esl_h}_clip_coco" --image_root "${IMAGE_ROOT:-data/MS-COCO}" \
  --ann_path "${ANN_PATH:-data/MS-COCO}" --clip_path "${CLIP_PATH:-openai/clip-vit-base-patch16}" \
  --output_dir "${OUTPUT_DIR:-runs/coco_clip_${HEAD:-esl_h}}" "$@"
