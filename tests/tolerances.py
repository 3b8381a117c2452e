"""Every tolerance of the suite, in one place."""

# Relative tolerances for comparisons against PyTorch (the article's model in reference/article_vit.py).
TORCH_RTOL = {"float64": 1e-10, "float32": 1e-4}
# The largest relative error a numerical gradient check (npvit/gradcheck.py, float64) may show.
GRADCHECK_TOL = 1e-6
# A kernel set against the reference set (npvit/ops): the same function up to rounding.
KERNEL_RTOL = {"float64": 1e-12, "float32": 1e-5}
