#!/bin/sh
# MS-COCO, BUTD regions + BERT-base: the released recipe config/recipes/${HEAD}_region_coco.json.
#   sh train_region_coco.sh                 # X-Dim (d=1024, 20 epochs, lr x0.1 at 10)
#   HEAD=esl_h sh train_region_coco.sh      # ESL-H (d=512, k=2); esl_a for ESL-A, cosine for VSE
# Runs from any folder; relative paths are taken from where you stand.
# Environment: DATA_PATH (holds coco_precomp/), BERT_PATH, OUTPUT_DIR. Extra arguments override the recipe.
set -e
exec ${PYTHON:-python} "$(dirname "$0")/train.py" --recipe "${HEAD:-xdim}_region_coco" --data_path "${DATA_PATH:-data/MS-COCO}" \
  --bert_path "${BERT_PATH:-bert-base-uncased}" --output_dir "${OUTPUT_DIR:-runs/coco_region_${HEAD:-xdim}}" "$@"
