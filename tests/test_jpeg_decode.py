"""The decode path (data/jpeg_decode.py) against the worker path (data/loaders.py: TwoCrops, ImageTreeTwoViews), on
CPU: decode_jpeg's CPU decoder stands in for nvJPEG."""
import io
import os

import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

import data.jpeg_decode as jd
from data.batched_augment import BatchedSimCLRAugment, RandomResizedCrop, resized_crop
from data.datasets import IMAGENET_STD, FileImages, read_image, scan_image_folder
from data.jpeg_decode import (DecodedTwoViews, TreeBytes, batch_bytes, collate_bytes, cut_crops, decode_batch,
                              is_batch_jpeg)
from data.keyed_random import ViewKeys
from data.loaders import ImageTreeTwoViews, TwoCrops
from data.official_augment import PIPELINES
from utils.errors import UserError

CPU = torch.device("cpu")
SIZE, SEED, BATCH = 32, 5, 3
SIZES = [(40, 60), (90, 70), (64, 48), (70, 90), (55, 75), (48, 41)]  # (H, W) of the RGB JPEGs
# (epoch, index) keys of all 9 images, batches mixing two epochs (as StepSampler's stream batching does)
KEYS = [(3, 4), (3, 0), (7, 8), (3, 6), (7, 2), (7, 1), (3, 7), (7, 5), (3, 3)]
LEVELS = 1  # the decode path's crops are within 1 level of 255 of the worker path's (data/jpeg_decode.cut_crops;
# on CPU the decode itself is PIL's, bit for bit)


def picture(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8: colour waves plus noise, clipped to 0..255 over about a third of the picture, so that the
    bicubic passes overshoot 0..255 next to saturated pixels and PIL clips its intermediate rows there."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    waves = np.stack([128 + 180 * np.sin(x / (4 + c) + seed) * np.cos(y / (3 + c) - c) for c in range(3)], -1)
    return np.clip(waves + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> FileImages:
    """train/a/: 6 RGB JPEGs of mixed sizes; train/b/: a grayscale JPEG, a CMYK JPEG and a PNG named .JPEG."""
    root = tmp_path_factory.mktemp("jpegs")
    os.makedirs(root / "train" / "a")
    os.makedirs(root / "train" / "b")
    for k, (h, w) in enumerate(SIZES):
        (root / "train" / "a" / f"{k}.JPEG").write_bytes(jpeg_bytes(Image.fromarray(picture(h, w, k))))
    (root / "train" / "b" / "gray.JPEG").write_bytes(jpeg_bytes(Image.fromarray(picture(50, 45, 6)[..., 0])))
    (root / "train" / "b" / "cmyk.JPEG").write_bytes(jpeg_bytes(Image.fromarray(picture(45, 66, 7)).convert("CMYK")))
    Image.fromarray(picture(60, 52, 8)).save(root / "train" / "b" / "png.JPEG", format="PNG")
    samples, classes = scan_image_folder(str(root / "train"))
    return FileImages(samples, classes)


def name(images: FileImages, i: int) -> str:
    return os.path.basename(images.paths[i])


def worker_loader(images, augment) -> DataLoader:
    return DataLoader(TwoCrops(images, augment, seed=SEED), batch_size=BATCH, sampler=KEYS, num_workers=0)


def bytes_loader(images, augment) -> DataLoader:
    return DataLoader(TreeBytes(images, augment, seed=SEED), batch_size=BATCH, sampler=KEYS, num_workers=0,
                      collate_fn=collate_bytes)


def test_tree_has_the_files_each_path_handles_specially(tree):
    assert [name(tree, i) for i in range(len(tree))] == [f"{k}.JPEG" for k in range(6)] + \
        ["cmyk.JPEG", "gray.JPEG", "png.JPEG"]
    kinds = []
    for path in tree.paths:
        with Image.open(path) as im:
            kinds.append((im.format, im.mode))
    assert kinds == [("JPEG", "RGB")] * 6 + [("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "RGB")]


def test_boxes_are_the_boxes_the_workers_cut(tree):
    augment = BatchedSimCLRAugment(SIZE)
    two, cut = TwoCrops(tree, augment, seed=SEED), []
    two.crop = type("Recorder", (), {"cut": lambda self, img, box, size: cut.append(box) or torch.zeros(3, 1, 1)})()
    tb = TreeBytes(tree, augment, seed=SEED)
    for epoch, i in KEYS:
        data, e, j, boxes = tb[(epoch, i)]
        two[(epoch, i)]
        assert (e, j) == (epoch, i) and boxes.dtype == torch.int64 and boxes.shape == (2, 4)
        assert boxes.tolist() == [list(cut[-2]), list(cut[-1])], name(tree, i)
        with open(tree.paths[i], "rb") as f:
            assert data.dtype == torch.uint8 and data.numpy().tobytes() == f.read()
    # and the boxes depend on the key: another epoch or seed draws others
    data, _, _, boxes = tb[(3, 1)]
    assert boxes[0].tolist() != boxes[1].tolist() and boxes.tolist() != tb[(4, 1)][3].tolist()
    assert boxes.tolist() != TreeBytes(tree, augment, seed=SEED + 1)[(3, 1)][3].tolist()


def test_batched_decode_and_fallback(tree, monkeypatch):
    data = [TreeBytes(tree, BatchedSimCLRAugment(SIZE))[(0, i)][0] for i in range(len(tree))]
    assert [is_batch_jpeg(d) for d in data] == [True] * 6 + [False, True, False]  # CMYK and PNG go to PIL
    good = data[0]
    for other in (good[:len(good) // 2], torch.cat([good, torch.zeros(7, dtype=torch.uint8)]),
                  torch.frombuffer(bytearray(jpeg_bytes(Image.fromarray(picture(20, 30, 9)), keep_rgb=True)),
                                   dtype=torch.uint8)):
        assert not is_batch_jpeg(other)  # cut short, trailing bytes, RGB-coded (Adobe transform 0)

    calls, pil = [], []
    real_decode, real_read = torchvision.io.decode_jpeg, jd.read_image  # jd imports it at each call
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda d, **kw: calls.append(len(d)) or real_decode(d, **kw))
    monkeypatch.setattr(jd, "read_image", lambda p: pil.append(os.path.basename(p)) or real_read(p))
    decoded = decode_batch(data, tree.paths, CPU)
    assert calls == [7] and pil == ["cmyk.JPEG", "png.JPEG"]
    # torchvision's libjpeg-turbo decodes these files as PIL's does, bit for bit (the grayscale one to RGB too)
    for i, x in enumerate(decoded):
        ref = pil_to_tensor(real_read(tree.paths[i]))
        assert x.dtype == torch.uint8 and x.shape == ref.shape and torch.equal(x, ref), name(tree, i)


def test_a_file_the_batched_decode_refuses_goes_to_pil(tree, monkeypatch):
    data = [TreeBytes(tree, BatchedSimCLRAugment(SIZE))[(0, i)][0] for i in range(3)]
    refused, calls, pil = data[1], [], []
    real_decode, real_read = torchvision.io.decode_jpeg, jd.read_image

    def decode(d, **kw):  # as nvJPEG refusing a file that PIL reads
        calls.append(len(d))
        if any(t is refused for t in d):
            raise RuntimeError("Error while decoding JPEG images")
        return real_decode(d, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode)
    monkeypatch.setattr(jd, "read_image", lambda p: pil.append(p) or real_read(p))
    decoded = decode_batch(data, tree.paths[:3], CPU)
    assert calls == [3, 1, 1, 1] and pil == [tree.paths[1]]
    for i, x in enumerate(decoded):
        assert torch.equal(x, pil_to_tensor(real_read(tree.paths[i])))


def test_corrupt_files_raise_a_user_error_naming_them(tree, tmp_path):
    good = np.fromfile(tree.paths[0], dtype=np.uint8)
    truncated, garbled, junk = tmp_path / "truncated.JPEG", tmp_path / "garbled.JPEG", tmp_path / "junk.JPEG"
    truncated.write_bytes(good[:len(good) // 2].tobytes())
    bad = good.copy()
    bad[len(bad) // 2:len(bad) // 2 + 2] = (0xFF, 0x19)  # an unknown marker in the scan, still ending with EOI
    garbled.write_bytes(bad.tobytes())
    junk.write_bytes(b"not an image")
    for path in (truncated, garbled):
        paths = [tree.paths[0], str(path), tree.paths[1]]
        data = [torch.from_numpy(np.fromfile(p, dtype=np.uint8)) for p in paths]
        with pytest.raises(UserError) as err:
            decode_batch(data, paths, CPU)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg and tree.paths[0] not in msg and tree.paths[1] not in msg
    with pytest.raises(UserError, match=str(junk)):
        TreeBytes(FileImages([(str(junk), 0)], ["x"]), BatchedSimCLRAugment(SIZE))[(0, 0)]


def test_crops_equal_the_workers_crops_within_a_level(tree):
    augment = BatchedSimCLRAugment(SIZE)
    worst = {}
    for (c0, c1, epoch, idx), (data, e, i, boxes) in zip(worker_loader(tree, augment), bytes_loader(tree, augment)):
        assert torch.equal(e, epoch) and torch.equal(i, idx)
        crops = cut_crops(decode_batch(data, [tree.paths[k] for k in i.tolist()], CPU), boxes, SIZE)
        for view, (ours, theirs) in enumerate(zip(crops, (c0, c1))):
            assert ours.dtype == torch.uint8 and ours.shape == theirs.shape == (len(i), 3, SIZE, SIZE)
            for k, j in enumerate(i.tolist()):
                diff = (ours[k].int() - theirs[k].int()).abs().max().item()
                worst[name(tree, j)] = max(worst.get(name(tree, j), 0), diff)
                assert diff <= LEVELS, (name(tree, j), view, diff)
    assert len(worst) == len(tree)
    print("max crop difference (levels) per file:", worst)


def test_views_equal_the_image_tree_views(tree):
    """Without colour jitter the ops after the crop (flip, grayscale, blur) average pixels with weights that sum
    to 1, so a view differs from the worker path's by at most the crops' difference over the normalisation's std."""
    crop_aug, augment = BatchedSimCLRAugment(SIZE), BatchedSimCLRAugment(SIZE, jitter_strength=0.0, blur=True)
    ours = DecodedTwoViews(bytes_loader(tree, crop_aug), augment, tree, CPU, seed=SEED)
    theirs = ImageTreeTwoViews(worker_loader(tree, crop_aug), augment, CPU, seed=SEED)
    assert len(ours) == len(theirs) == 3
    tol = LEVELS / 255 / min(IMAGENET_STD) + 1e-5
    worst = 0.0
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            assert x.dtype == torch.float32 and x.shape == y.shape == (BATCH, 3, SIZE, SIZE)
            worst = max(worst, (x - y).abs().max().item())
    assert worst <= tol, (worst, tol)
    print(f"max view difference without jitter: {worst:.4f} (bound {tol:.4f})")


def test_views_use_the_keys_colour_draws(tree, monkeypatch):
    """With the worker path's decode and crops substituted, the decode path's views are the worker path's bit for
    bit at full strength: the same keys (seed, epoch, index, view), hence the same flips, colours and blurs."""
    crop_aug, augment = BatchedSimCLRAugment(SIZE), BatchedSimCLRAugment(SIZE, jitter_strength=1.0, blur=True)

    def pil_cut(images, boxes, size):
        return tuple(torch.stack([RandomResizedCrop().cut(to_pil_image(img), tuple(box), size)
                                  for img, box in zip(images, boxes[:, view].tolist())]) for view in (0, 1))

    monkeypatch.setattr(jd, "decode_batch", lambda data, paths, device: [pil_to_tensor(read_image(p)) for p in paths])
    monkeypatch.setattr(jd, "cut_crops", pil_cut)
    ours = list(DecodedTwoViews(bytes_loader(tree, crop_aug), augment, tree, CPU, seed=SEED))
    theirs = list(ImageTreeTwoViews(worker_loader(tree, crop_aug), augment, CPU, seed=SEED))
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], a[1])
    with pytest.raises(ValueError, match="OfficialCrop"):
        DecodedTwoViews(bytes_loader(tree, crop_aug), BatchedSimCLRAugment(SIZE, pipeline=PIPELINES["official"]),
                        tree, CPU)


def test_collate_and_batch_bytes(tree):
    tb = TreeBytes(tree, BatchedSimCLRAugment(SIZE), seed=SEED)
    data, epochs, indices, boxes = collate_bytes([tb[key] for key in KEYS[:4]])
    assert epochs.tolist() == [k[0] for k in KEYS[:4]] and indices.tolist() == [k[1] for k in KEYS[:4]]
    assert boxes.shape == (4, 2, 4) and torch.equal(boxes[2], tb[KEYS[2]][3])
    assert len({d.untyped_storage().data_ptr() for d in data}) == 1  # one buffer: one shared-memory segment
    for d, (_, i) in zip(data, KEYS[:4]):
        assert torch.equal(d, tb[(0, i)][0])
    total = sum(d.numel() for d in data)
    shm = total + sum(t.numel() * t.element_size() for t in (epochs, indices, boxes))
    assert batch_bytes(4, total // 4) + total % 4 == shm


def test_keys_are_the_view_keys(tree):
    """TreeBytes' boxes are crop_params of ViewKeys(index, seed, epoch, view) at the header's size."""
    augment = BatchedSimCLRAugment(SIZE)
    for epoch, i in KEYS[:3]:
        with Image.open(tree.paths[i]) as im:
            w, h = im.size
        ref = [[int(augment.crop_params(ViewKeys(torch.tensor([i]), SEED, epoch, v), h, w)[k]) for k in jd.BOX]
               for v in (0, 1)]
        assert TreeBytes(tree, augment, seed=SEED)[(epoch, i)][3].tolist() == ref


def test_simclr_decode_gpu_trains_as_the_workers_path(tree, capsys):
    """simclr.py --decode gpu (on a CPU: torchvision's CPU decoder stands in) on the tree above: the startup line
    says where images are decoded, and the first step's loss is the worker path's up to the crops' rounding.
    --decode auto on a CPU is the worker path; with --augment official, gpu is
    refused in one line."""
    import csv

    import simclr
    from data.loaders import decode_path
    from tests.tiny_data import write_paths
    root = os.path.dirname(os.path.dirname(os.path.dirname(tree.paths[0])))  # root/train/a/0.JPEG
    paths = write_paths(os.path.join(root, "paths.json"), {"imagenet": root})
    losses = {}
    for decode in ("gpu", "workers"):
        ckpt = os.path.join(root, f"{decode}.pth")
        simclr.main(simclr.get_args_parser().parse_args(
            ["--dataset", "imagenet", "--dataset-paths", paths, "--arch", "resnet18", "--batch-size", "4",
             "--image-size", "16", "--num-workers", "0", "--precision", "fp32", "--device", "cpu", "--num-epochs", "2",
             "--warmup-epochs", "1", "--log-freq", "1", "--proj-dim", "16", "--test-freq", "0", "--decode", decode,
             "--filename", ckpt]))
        out = capsys.readouterr().out
        said = {"gpu": "images decoded on cpu in batches", "workers": "decoded by the DataLoader workers"}
        assert said[decode] in out
        with open(ckpt.replace(".pth", ".csv"), newline="") as f:
            losses[decode] = [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]
    assert len(losses["gpu"]) == len(losses["workers"]) == 9 * 2 // 4 + 1
    # The first step's views differ by rounding alone (crops within a level: ~1% of a normalised pixel's spread);
    # the later steps start from weights that differ by it, and drift apart.
    assert losses["gpu"][0] == pytest.approx(losses["workers"][0], rel=2e-2) and losses["gpu"] != losses["workers"]
    assert decode_path("auto", tree, CPU) == "workers"
    with pytest.raises(simclr.UserError, match="--decode gpu cuts torchvision's crops; --augment official"):
        decode_path("gpu", tree, CPU, "official")


def test_decode_gpu_needs_a_decoder_on_the_device(tree, monkeypatch):
    """Without torchvision.io.decode_jpeg on the device (no nvJPEG; or a torchvision that removed it, as 0.29
    announces), ``auto`` takes the workers and ``gpu`` is refused in one line, before any image is read."""
    from data.loaders import decode_path
    assert decode_path("gpu", tree, CPU) == "gpu"
    monkeypatch.delattr(torchvision.io, "decode_jpeg")
    assert decode_path("auto", tree, torch.device("cuda")) == "workers"
    with pytest.raises(UserError, match="--decode gpu: this torchvision's decode_jpeg does not decode on cpu"):
        decode_path("gpu", tree, CPU)


def test_cut_crops_batches_images_of_any_size_without_reading_the_padding():
    """cut_crops resamples the whole batch at once in the largest image's frame: an image's crops are the same
    alone and next to a larger (brighter) image, and equal PIL's antialiased bicubic of the box."""
    pic = picture(30, 20, 1)
    small = torch.from_numpy(pic).permute(2, 0, 1).contiguous()
    large = torch.full((3, 70, 90), 255, dtype=torch.uint8)
    boxes = torch.tensor([[[2, 3, 25, 17], [0, 0, 30, 20]], [[10, 5, 60, 80], [0, 0, 70, 90]]])
    alone = cut_crops([small], boxes[:1], 12)
    together = cut_crops([small, large], boxes, 12)
    for view in (0, 1):
        assert torch.equal(together[view][0], alone[view][0])
        top, left, h, w = boxes[0, view].tolist()
        ref = pil_to_tensor(Image.fromarray(pic).crop((left, top, left + w, top + h)).resize((12, 12), Image.BICUBIC))
        assert (together[view][0].int() - ref.int()).abs().max() <= 1


@pytest.mark.parametrize("h, w", [(40, 12), (12, 40), (36, 30), (37, 30), (30, 36), (50, 44), (45, 20), (20, 20),
                                  (60, 8)])
def test_crops_follow_pils_pass_order_and_clipping(h, w):
    """PIL resizes in two 1-D passes with uint8 rows in between, the vertical pass first when Pillow >= 13 sees the
    height shrink by more than twice as many pixels as the width: on a picture saturated over a fifth of its pixels
    (where the first pass overshoots 0..255 and PIL clips) the crops are PIL's within a level for boxes of either
    order, up- and downscaled (the next test shows that the float resize without the clipping misses by more)."""
    pic = picture(64, 48, 2)
    top, left = 3, 2
    box = torch.tensor([[[top, left, h, w]] * 2])
    ours = cut_crops([torch.from_numpy(pic).permute(2, 0, 1).contiguous()], box, 24)[0][0].int()
    ref = pil_to_tensor(Image.fromarray(pic).crop((left, top, left + w, top + h)).resize((24, 24), Image.BICUBIC))
    assert (ours - ref.int()).abs().max() <= 1
    vertical = jd.pil_vertical_first(box[0, :1, 2], box[0, :1, 3], 24)
    assert bool(vertical) == (jd.PIL_MAJOR >= 13 and (h, w) in {(40, 12), (37, 30), (45, 20), (60, 8)})


def test_the_clipping_between_passes_matters():
    """Without pil_rows, the float resize misses PIL's crops by more than a level on the saturated pictures: the
    test above would catch a resize that lost the clipping."""
    pic = picture(64, 48, 2)
    x = torch.from_numpy(pic).permute(2, 0, 1)[None].float() / 255
    worst = 0
    for h, w in [(40, 12), (12, 40), (37, 30), (30, 36), (50, 44)]:
        one = torch.tensor([3]), torch.tensor([2]), torch.tensor([h]), torch.tensor([w])
        flt = resized_crop(x.transpose(2, 3), one[1], one[0], one[3], one[2], 24).transpose(2, 3) \
            if jd.pil_vertical_first(one[2], one[3], 24) else resized_crop(x, *one, 24)
        ref = pil_to_tensor(Image.fromarray(pic).crop((2, 3, 2 + w, 3 + h)).resize((24, 24), Image.BICUBIC))
        worst = max(worst, int((flt[0].mul(255).round() - ref.float()).abs().max()))
    assert worst > 1, worst


def test_cut_crops_bounds_its_frames(monkeypatch):
    """Frames hold at most FRAME_LIMIT values (a batch with an image of ImageNet's largest sizes would otherwise
    make every image as large): the images go by area into groups that fit, each image once, and the crops are
    those of one frame up to float rounding."""
    from data import jpeg_decode
    rng = np.random.default_rng(3)
    sides = [(int(a), int(b)) for a, b in rng.integers(20, 60, (7, 2))]
    images = [torch.from_numpy(picture(hh, ww, k)).permute(2, 0, 1).contiguous() for k, (hh, ww) in enumerate(sides)]
    boxes = torch.tensor([[[1, 2, hh - 3, ww - 4], [0, 0, hh, ww]] for hh, ww in sides])
    whole = cut_crops(images, boxes, 10)
    monkeypatch.setattr(jpeg_decode, "FRAME_LIMIT", 3 * 60 * 60 * 2)
    groups = jpeg_decode._frame_groups(torch.tensor(sides))
    assert sorted(sum(groups, [])) == list(range(7)) and len(groups) > 1
    limit = jpeg_decode.FRAME_LIMIT
    assert all(len(g) * 3 * max(sides[i][0] for i in g) * max(sides[i][1] for i in g) <= limit for g in groups)
    for a, b in zip(whole, cut_crops(images, boxes, 10)):
        assert (a.int() - b.int()).abs().max() <= 1
