#!/bin/sh
# The offline demo: generated data, training and evaluation on CPU (see README for the time it takes).
#   sh demo.sh                  X-Dim on generated regions + a tiny BERT
#   sh demo.sh --system esl_h   ESL-H  (esl_a, cosine, clip likewise)
PYTHONPATH="$(cd "$(dirname "$0")" && pwd)${PYTHONPATH:+:$PYTHONPATH}" exec ${PYTHON:-python} -m demo "$@"
