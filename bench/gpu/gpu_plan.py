"""What the GPU check measures: the rows of every section and the peaks its rates are set against.
Shared by bench/gpu/gpu_check.py (which imports no torch) and bench/gpu/gpu_sections.py."""

PRECISIONS = ("fp32", "tf32", "bf16")
# Assumed peaks of an H200 SXM, TFLOP/s: fp32 on the CUDA cores, TF32 and bf16 on the tensor cores.
PEAK_TFLOPS = {"fp32": 67.0, "tf32": 495.0, "bf16": 990.0}
PEAKS_SOURCE = "H200 SXM datasheet, dense (no sparsity); fp32 without tensor cores"
ENCODERS = ("bert", "clip_vit")
SYSTEMS = ("xdim_region", "esl_h_region", "esl_h_clip")


def scoring_keys(dataset: str) -> list[str]:
    return [f"{dataset}/{head}/{precision}" for head in ("xdim", "esl_h") for precision in PRECISIONS]


PLANNED = {  # the rows of every section, in table order
    "env": ["versions"] + [f"gemm/{precision}" for precision in PRECISIONS],
    "pytest_cuda": ["tests/test_cuda.py"],
    "scoring_f30k": scoring_keys("f30k"),
    "encoding": [f"{encoder}/{precision}" for encoder in ENCODERS for precision in ("fp32", "bf16")],
    "training": list(SYSTEMS),
    "eval_mem": ["xdim", "esl_h"],
    "scoring_coco": scoring_keys("coco"),
}
