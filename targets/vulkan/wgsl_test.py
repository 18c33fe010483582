"""fix_wgsl: the rewrites of TVM's WGSL that wgpu would reject, checked on the lines TVM 0.27 emits."""

from aglmc.targets.vulkan.wgsl import fix_wgsl


def test_infinity_and_nan_become_bitcasts():
    line = "out[i] = (x[i] / max(min(n[0i], inff), 1.000000e-09f)) + select(0.0f, nanf, c == -inff);"
    fixed = fix_wgsl(line)
    assert "inff" not in fixed and "nanf" not in fixed
    assert fixed.count("bitcast<f32>(0x7f800000u)") == 2 and "-bitcast<f32>(0x7f800000u)" in fixed
    assert "bitcast<f32>(0x7fc00000u)" in fixed


def test_int_min_literal_is_built_from_representable_ones():
    assert fix_wgsl("acc[0] = -2147483648i;") == "acc[0] = (-2147483647i - 1i);"
    assert fix_wgsl("y = x - 2147483648i;") == "y = x - 2147483648i;"  # not the INT_MIN literal: left alone


def test_narrow_integer_conversions_truncate_in_i32():
    line = "r = max(r, i32(i8(i32(i8(bool(i32(x[k] == 0.0f)))))));"
    fixed = fix_wgsl(line)
    assert "i8" not in fixed
    assert fixed == ("r = max(r, i32(((i32(i32(((i32(bool(i32(x[k] == 0.0f))) << 24u) >> 24u))) << 24u) "
                     ">> 24u)));")
    assert fix_wgsl("var v : u8 = u8(w);") == "var v : u32 = (u32(w) & 0xffu);"
    assert fix_wgsl("let cast_i8 : i32 = 1i;") == "let cast_i8 : i32 = 1i;"  # identifiers are not types


def test_clean_source_is_unchanged():
    src = "@compute @workgroup_size(64, 1, 1)\nfn k() { let a : f32 = 1.0f; }\n"
    assert fix_wgsl(src) == src
