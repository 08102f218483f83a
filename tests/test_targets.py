"""The target registry: presets, user TOML files and the local-support check."""
import pytest

from profiling.targets import BUILTIN_TARGETS, Target, TargetError, get_target, list_targets, load_targets_file


def test_builtin_presets():
    assert {"local-cpu", "local-cpu-mt", "cuda-gpu", "jetson-nano", "raspberry-pi-4"} <= set(BUILTIN_TARGETS)
    t = get_target("local-cpu")
    assert (t.providers, t.precision, t.threads, t.batch) == (("CPUExecutionProvider",), "fp32", 1, 1)
    assert get_target("local-cpu-mt").resolved_threads(cores=8) == 8
    nano = get_target("jetson-nano")
    assert nano.providers[0] == "TensorrtExecutionProvider" and nano.precision == "fp16" and nano.arch == "aarch64"
    assert get_target("raspberry-pi-4").threads == 4


def test_unknown_target_lists_valid_ones():
    with pytest.raises(TargetError, match="valid targets: .*local-cpu"):
        get_target("nope")


def test_targets_file(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('[targets.orin]\nproviders = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]\n'
                 'precision = "fp16"\nthreads = 4\narch = "aarch64"\n')
    targets = list_targets(f)
    assert "orin" in targets and "local-cpu" in targets
    assert targets["orin"].providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    bad = tmp_path / "bad.toml"
    bad.write_text('[targets.x]\nprecison = "fp16"\n')
    with pytest.raises(TargetError, match="unknown keys"):
        load_targets_file(bad)
    with pytest.raises(TargetError, match="does not exist"):
        load_targets_file(tmp_path / "missing.toml")
    with pytest.raises(TargetError, match="precision"):
        Target("x", "d", precision="fp8")


def test_check_local_support_names_what_is_missing():
    nano = get_target("jetson-nano")
    with pytest.raises(TargetError) as e:
        nano.check_local_support(["CPUExecutionProvider"], machine="x86_64")
    msg = str(e.value)
    assert "aarch64" in msg and "Tensorrt" in msg and "`host`" in msg  # the CLI shows it as --host
    nano.check_local_support(["TensorrtExecutionProvider", "CPUExecutionProvider"], machine="aarch64")
    get_target("local-cpu").check_local_support(["CPUExecutionProvider"], machine="x86_64")
