"""Datasets and weight-sharing supernets: inheritance, resumable training, BN recalibration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search.accuracy.data import DataError, load_dataset
from search.spaces import get_space
from search.accuracy.supernet import (SupernetError, TrainConfig, accuracy, build_supernet, recalibrate_bn)

torch.set_num_threads(1)

TINY = {
    "nb201": dict(C=4, N=1, resolution=8),
    "mbv3": dict(resolutions=(8, 12), width_mult=0.35, num_classes=10, depth_choices=(1, 2)),
    "resnet": dict(resolutions=(8, 12), base_widths=(16, 32), stage_strides=(1, 2), stem_stride=1, stem_channels=8,
                   num_classes=10, depth_choices=(1, 2)),
}


@pytest.fixture(scope="module")
def digits():
    train, val = load_dataset("digits").split(0.2, seed=0)
    mean, std = train.stats()
    return train.normalized(mean, std), val.normalized(mean, std)


# ---- data -------------------------------------------------------------------------------

def test_digits_is_bundled_and_split_is_stratified(digits):
    train, val = digits
    assert train.shape == (3, 8, 8) and train.num_classes == 10
    assert len(train) + len(val) == 1797
    counts = np.bincount(val.y.numpy(), minlength=10)
    assert counts.min() >= 30  # ~20% of each class
    assert abs(float(train.x.mean())) < 1e-4  # normalised with its own statistics


def test_image_folder_and_npz_sources(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    ds = load_dataset(tmp_path / "imgs", split="train", image_size=8)
    assert ds.x.shape == (6, 3, 8, 8) and ds.classes == ["cat", "dog"] and ds.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert len(load_dataset(tmp_path / "imgs", split="test", image_size=8, max_per_class=2)) == 4
    x = rng.integers(0, 255, (5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 1, 0]))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.x.shape == (5, 3, 6, 6) and ds.num_classes == 3
    np.testing.assert_allclose(ds.x[1, 2].numpy(), x[1, :, :, 2] / 255.0, rtol=1e-6)


def test_unreadable_or_empty_data_gives_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-directories"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        load_dataset(tmp_path / "noimg")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_dataset(tmp_path / "bad")
    np.savez(tmp_path / "k.npz", foo=np.zeros(3))
    with pytest.raises(DataError, match="keys"):
        load_dataset(tmp_path / "k.npz")
    (tmp_path / "c.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(tmp_path / "c.npz")


# ---- supernets --------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TINY))
def test_subnet_inherits_the_supernet_weights(name, digits):
    space = get_space(name, **TINY[name])
    torch.manual_seed(0)
    sn = build_supernet(space)
    train, _ = digits
    sn.fit(train, TrainConfig(steps=3, batch_size=32, checkpoint_every=100))  # BN statistics become non-trivial
    sn.eval()
    rng = np.random.default_rng(0)
    x = train.x[:8]
    for _ in range(3):
        a = space.sample(rng)
        net = sn.subnet(a).eval()
        r = space.input_shape(a)[1]
        xr = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False) if r != 8 else x
        with torch.no_grad():
            torch.testing.assert_close(net(xr), sn(x, a), rtol=1e-4, atol=1e-5)
        # a plain network of the space: same parameter names and shapes as space.build
        ref = space.build(a)
        assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


class _Killed(Exception):
    pass


def _kill_at_step_2(msg):
    if msg.startswith("step 2/"):
        raise _Killed


def _assert_resume_matches_a_straight_run(space, train, cfg, ckpt):
    """Train straight through; train again killed after step 2, resume from the checkpoint in a
    differently seeded "fresh process": the weights must be identical. Returns the resume's logs."""
    torch.manual_seed(0)
    straight = build_supernet(space)
    straight.fit(train, cfg)
    torch.manual_seed(0)
    with pytest.raises(_Killed):
        build_supernet(space).fit(train, cfg, checkpoint=ckpt, log=_kill_at_step_2)
    torch.manual_seed(1)  # a fresh process would initialise differently: the checkpoint must win
    again = build_supernet(space)
    logs = []
    info = again.fit(train, cfg, checkpoint=ckpt, log=logs.append)
    assert info["resumed_from"] == 2 and logs[0].startswith("resumed")
    for (k, a), b in zip(straight.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_training_resumes_from_its_checkpoint_with_identical_results(digits, tmp_path):
    space = get_space("resnet", **TINY["resnet"])
    train, _ = digits
    cfg = TrainConfig(steps=4, batch_size=32, checkpoint_every=2, seed=3)
    _assert_resume_matches_a_straight_run(space, train, cfg, tmp_path / "sn.pt")
    with pytest.raises(SupernetError, match="other settings"):
        build_supernet(space).fit(train, TrainConfig(steps=5, batch_size=32), checkpoint=tmp_path / "sn.pt")


def test_bn_recalibration_estimates_the_subnet_statistics(digits):
    space = get_space("nb201", **TINY["nb201"])
    train, _ = digits
    torch.manual_seed(0)
    net = space.build(space.sample(0))
    recalibrate_bn(net, train, 8, images=len(train), batch_size=len(train))
    stem_conv, stem_bn = net.stem[0], net.stem[1]
    with torch.no_grad():
        z = stem_conv(train.x)
    torch.testing.assert_close(stem_bn.running_mean, z.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not net.training


def test_supernet_training_learns_and_evaluates_quickly(digits):
    import time
    space = get_space("nb201", **TINY["nb201"])
    train, val = digits
    torch.manual_seed(0)
    sn = build_supernet(space)
    archs = [space.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")]
    before = sn.evaluate(archs[0], val, calib=train)
    sn.fit(train, TrainConfig(steps=60, batch_size=64, lr=0.1))
    t = time.perf_counter()
    after = sn.evaluate(archs[0], val, calib=train)
    assert time.perf_counter() - t < 10
    assert after > max(40.0, before + 20)  # chance is 10%
    # a subnet with inherited weights is a plain module that `accuracy` can evaluate too
    net = recalibrate_bn(sn.subnet(archs[0]), train, 8)
    assert accuracy(net, val) == pytest.approx(after, abs=1.0)


def test_fair_sampling_trains_every_op_of_every_edge_once_per_step(digits, tmp_path):
    """FairNAS strict fairness: a step's 5 nb201 paths use each op on each edge exactly once."""
    from search.spaces.nb201 import EDGES, OPS
    space = get_space("nb201", **TINY["nb201"])
    sn = build_supernet(space)
    rng = np.random.default_rng(0)
    for _ in range(20):
        archs, teacher = sn.training_archs(rng, n_random=2, sampling="fair")
        assert not teacher and len(archs) == len(OPS) == TrainConfig(sampling="fair").paths_per_step(space)
        for e in range(len(EDGES)):
            assert sorted(a[e] for a in archs) == sorted(OPS)
    with pytest.raises(SupernetError, match="sandwich rule"):
        build_supernet(get_space("resnet", **TINY["resnet"])).training_archs(rng, 2, sampling="fair")
    # a fair run resumed from its checkpoint ends where an uninterrupted one does
    train, _ = digits
    cfg = TrainConfig(steps=3, batch_size=32, checkpoint_every=1, seed=5, sampling="fair")
    _assert_resume_matches_a_straight_run(space, train, cfg, tmp_path / "f.pt")


def test_few_shot_split_gives_each_op_of_the_edge_its_own_fine_tuned_weights(digits, tmp_path):
    """Few-shot NAS: each sub-supernet starts as the parent, trains only paths with its op on the
    split edge, scores only the subnets with that op there, and resumes from its own checkpoint."""
    from search.spaces.nb201 import OPS
    from search.accuracy.supernet import FewShotNB201Supernet
    space = get_space("nb201", **TINY["nb201"])
    train, val = digits
    torch.manual_seed(0)
    parent = build_supernet(space)
    parent.fit(train, TrainConfig(steps=3, batch_size=32, checkpoint_every=100, sampling="fair"))
    fs = FewShotNB201Supernet(parent, edge=2)
    rng = np.random.default_rng(0)
    for op in OPS:
        archs, _ = fs.parts[op].training_archs(rng, 2, sampling="fair")
        assert len(archs) == len(OPS) and all(a[2] == op for a in archs)
    conv = space.from_string("|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|")
    pool = conv[:2] + ("avg_pool_3x3",) + conv[3:]
    fs.eval()
    parent.eval()
    with torch.no_grad():  # before fine-tuning every part is the parent
        torch.testing.assert_close(fs(val.x[:8], conv), parent(val.x[:8], conv))
    cfg = TrainConfig(steps=4, batch_size=32, checkpoint_every=2, sampling="fair", lr=0.05)
    info = fs.fit(train, cfg, checkpoint=tmp_path / "fs.pt", ops=["nor_conv_3x3"])
    assert list(info) == ["nor_conv_3x3"] and (tmp_path / "fs_edge2_nor_conv_3x3.pt").exists()
    assert not (tmp_path / "fs_edge2_avg_pool_3x3.pt").exists()
    fs.eval()
    with torch.no_grad():  # the conv part moved away from the parent, the pool part did not
        assert not torch.allclose(fs(val.x[:8], conv), parent(val.x[:8], conv))
        torch.testing.assert_close(fs(val.x[:8], pool), parent(val.x[:8], pool))
        torch.testing.assert_close(fs.subnet(conv).eval()(val.x[:8]), fs.parts["nor_conv_3x3"](val.x[:8], conv))
    # a second process picks the finished part up from its checkpoint
    again = FewShotNB201Supernet(parent, edge=2)
    assert again.fit(train, cfg, checkpoint=tmp_path / "fs.pt", ops=["nor_conv_3x3"])["nor_conv_3x3"]["resumed_from"] == 4
    for a, b in zip(again.parts["nor_conv_3x3"].state_dict().values(), fs.parts["nor_conv_3x3"].state_dict().values()):
        torch.testing.assert_close(a, b)
    # a checkpoint of one part is refused by another part's training
    (tmp_path / "fs_edge2_skip_connect.pt").write_bytes((tmp_path / "fs_edge2_nor_conv_3x3.pt").read_bytes())
    with pytest.raises(SupernetError, match="other settings"):
        again.fit(train, cfg, checkpoint=tmp_path / "fs.pt", ops=["skip_connect"])
    with pytest.raises(SupernetError, match="edge must be"):
        FewShotNB201Supernet(parent, edge=6)


def test_augmentation_translates_each_image_by_its_own_offset():
    """The vectorised crop equals cropping each zero-padded image at the offsets the generator
    draws (the draws come first, in this order, so CPU and GPU runs augment alike)."""
    from search.accuracy.supernet import _augment
    x = torch.randn(16, 3, 12, 12)
    out = _augment(x, torch.Generator().manual_seed(7), hflip=True)
    gen = torch.Generator().manual_seed(7)
    pad = 12 // 8
    dx = torch.randint(0, 2 * pad + 1, (16,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (16,), generator=gen)
    flip = torch.rand(16, generator=gen) < 0.5
    xp = F.pad(x, (pad, pad, pad, pad))
    for i in range(16):
        want = xp[i, :, dy[i]:dy[i] + 12, dx[i]:dx[i] + 12]
        torch.testing.assert_close(out[i], want.flip(-1) if flip[i] else want)
    assert 0 < int(flip.sum()) < 16 and len(set(zip(dx.tolist(), dy.tolist()))) > 1
