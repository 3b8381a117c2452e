"""The reference set (npvit/ops/reference.py) and the composites over it (composites.py): every backward
against central differences of its forward, in float64 (npvit.checks.check_reference_ops)."""
from npvit.checks import check_reference_ops
from tests.tolerances import GRADCHECK_TOL


def test_every_reference_op_passes_the_gradient_check():
    reports = check_reference_ops()
    names = " ".join(r.title for r in reports)
    for op in ("linear", "conv2d", "layernorm", "gelu", "(tanh)", "(erf)", "softmax", "scale", "attention",
               "dropout mask", "cross_entropy", "soft targets", "im2col"):
        assert op in names, op
    for report in reports:
        report.assert_ok(GRADCHECK_TOL)
        for row in report.rows:      # a direction along which the function is flat would prove nothing
            assert abs(row.analytic) > 1e-3, (report.title, row)
