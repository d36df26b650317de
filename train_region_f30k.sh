#!/bin/sh
# Flickr30K, BUTD regions + BERT-base: the released recipe config/recipes/${HEAD}_region_f30k.json.
#   sh train_region_f30k.sh                 # X-Dim (d=1024, 25 epochs, lr x0.1 at 15)
#   HEAD=esl_h sh train_region_f30k.sh      # ESL-H (d=512, k=2, 30 epochs); esl_a for ESL-A, cosine for VSE
# Runs from any folder; relative paths are taken from where you stand.
# Environment: DATA_PATH (holds f30k_precomp/), BERT_PATH, OUTPUT_DIR. Extra arguments override the recipe.
set -e
exec ${PYTHON:-python} "$(dirname "$0")/train.py" --recipe "${HEAD:-xdim}_region_f30k" --data_path "${DATA_PATH:-data/Flickr30K}" \
  --bert_path "${BERT_PATH:-bert-base-uncased}" --output_dir "${OUTPUT_DIR:-runs/f30k_region_${HEAD:-xdim}}" "$@"
