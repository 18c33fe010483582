"""--dump-ir and --print-after-all show the graph after every step, under the step's name."""

from __future__ import annotations

from conftest import EXAMPLES

SCHED = f'''model "{EXAMPLES / "01_digits_cnn" / "model.py"}:build"
pass fold_batchnorm on conv2d in "features.*"
target host
'''


def test_dump_ir_and_print_after_all(tmp_path, cli):
    sched = tmp_path / "digits.sched"
    sched.write_text(SCHED)
    dump = tmp_path / "ir"
    result = cli("build", sched, "--out", tmp_path / "out", "--dump-ir", dump, "--print-after-all")
    assert result.code == 0, result.err
    files = sorted(p.name for p in dump.iterdir())
    assert files == ["01-import.txt", "02-pass-fold_batchnorm.txt", "03-legalized.txt", "04-relax.txt"]
    assert "aten.batch_norm" in (dump / "01-import.txt").read_text()
    assert "aten.batch_norm" not in (dump / "02-pass-fold_batchnorm.txt").read_text()
    assert "R.nn.conv2d" in (dump / "04-relax.txt").read_text()
    assert "// ----- IR after pass-fold_batchnorm -----" in result.out
    # without an evaluate block the build verifies on the example inputs
    assert "on 1 sample(s) of 'example inputs'" in result.out


def test_explain_prints_each_candidate_site(tmp_path, cli):
    sched = tmp_path / "digits.sched"
    sched.write_text(SCHED.replace('in "features.*"', 'in "features.[04]"'))
    result = cli("build", sched, "--out", tmp_path / "out", "--explain", "fold_batchnorm", "--quiet")
    assert result.code == 0, result.err
    assert "fold_batchnorm on conv2d in \"features.[04]\": folded 1 batch norm(s), left 2" in result.out
    assert "folded: features.1 (batch_norm)" in result.out
    assert "left: features.8 (batch_norm_2): producer not selected" in result.out
