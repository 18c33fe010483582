"""VulkanCandidateRunner: a candidate built by the vulkan tuning builder is timed on the device; one the device
rejects, or a broken artifact, is a failed run beside it, not an exception."""

import zipfile

import pytest

pytest.importorskip("wgpu")

import tvm  # noqa: E402
from tvm import te  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

from aglmc.errors import TargetError  # noqa: E402
from aglmc.targets.vulkan import runtime  # noqa: E402
from aglmc.targets.vulkan.tuning import build_candidate  # noqa: E402
from aglmc.targets.vulkan.tuning_runner import VulkanCandidateRunner  # noqa: E402


def _has_adapter() -> bool:
    try:
        runtime.select_adapter()
        return True
    except TargetError:
        return False
    except Exception:  # noqa: BLE001 - wgpu-native failing to load at all
        return False


pytestmark = pytest.mark.skipif(not _has_adapter(), reason="no Vulkan adapter")


def _scaled_add(n=1024, threads=64):
    """``c = a * 2 + b`` scheduled by hand: a candidate as MetaSchedule would hand it over (``main``)."""
    a, b = te.placeholder((n,), name="a"), te.placeholder((n,), name="b")
    c = te.compute((n,), lambda i: a[i] * 2.0 + b[i], name="c")
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([a, b, c])}))
    (loop,) = sch.get_loops(sch.get_sblock("c"))
    bx, tx = sch.split(loop, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return sch.mod


def _target():
    return tvm.target.Target({"kind": "webgpu", "max_num_threads": 1024, "host": {"kind": "llvm"}})


def test_good_candidate_is_timed_and_bad_ones_fail_alone(tmp_path):
    good = build_candidate(_scaled_add(), _target(), str(tmp_path))
    args = ms.arg_info.ArgInfo.from_entry_func(_scaled_add())
    # a WGSL the device rejects: the same artifact with a shader that does not validate
    broken = tmp_path / "broken.wgpu"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith(".wgsl"):
                data = data.replace(b"@compute", b"@compute fn oops(")
            dst.writestr(item, data)
    runner = VulkanCandidateRunner(number=2, repeat=2, min_repeat_ms=0)
    inputs = [ms.runner.RunnerInput(str(p), "vulkan", args) for p in (good, broken, tmp_path / "missing.wgpu")]
    results = [f.result() for f in runner.run(inputs)]

    ok, rejected, missing = results
    assert ok.error_msg is None and len(ok.run_secs) == 2 and all(float(s) > 0 for s in ok.run_secs)
    assert ok.run_secs[0] < 1.0  # seconds per run of a 1024-element kernel, not a whole process
    assert rejected.run_secs is None and "rejected kernel 'main_kernel'" in rejected.error_msg
    assert missing.run_secs is None and "cannot load the vulkan artifact" in missing.error_msg


def test_candidate_over_the_device_workgroup_limit_is_a_failed_run(tmp_path):
    """2048 threads per workgroup: the builder makes it (webgpu target allowing it), the device refuses it."""
    target = tvm.target.Target({"kind": "webgpu", "max_num_threads": 2048, "host": {"kind": "llvm"}})
    path = build_candidate(_scaled_add(n=4096, threads=2048), target, str(tmp_path))
    args = ms.arg_info.ArgInfo.from_entry_func(_scaled_add(n=4096, threads=2048))
    (result,) = [f.result() for f in VulkanCandidateRunner(number=1, repeat=1).run(
        [ms.runner.RunnerInput(path, "vulkan", args)])]
    assert result.run_secs is None and result.error_msg
