"""The building blocks of a third input path for image trees: the JPEGs decoded on the training device (nvJPEG).

On the worker path (data/loaders.py: ``TwoCrops``, then ``ImageTreeTwoViews``) the DataLoader workers decode every
image with PIL and cut its two random resized crops; with ImageNet at ResNet-50's step rate the decode is what the
CPUs cannot keep up with. Here the workers only read the files' bytes and the image sizes from their headers and draw
the crop boxes (``TreeBytes``); the device decodes the batch in one ``torchvision.io.decode_jpeg`` call
(``decode_batch``), cuts the boxes with the same filter as the workers' PIL resize (``cut_crops``) and finishes the
views (``DecodedTwoViews``). The boxes and the colour draws are those of the views' keys (data/keyed_random.py), so
the views are the worker path's up to the decoder's and the resize's rounding (tests/test_jpeg_decode.py: on CPU,
where torchvision's libjpeg-turbo decodes as PIL's does, bit for bit, the crops are within 1 level of 255 of the
workers': ``cut_crops``). nvJPEG is not expected to decode bit for bit as libjpeg.

Files that PIL handles specially take ``data.datasets.read_image`` instead, one by one: CMYK and YCCK JPEGs (PIL's
conversion to RGB), anything that is not a complete 8-bit JPEG (a PNG named .JPEG, a truncated file: PIL names it),
and any file the batched decode refuses. EXIF orientation is applied by neither path.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info
from torchvision.transforms.functional import pil_to_tensor

from data.batched_augment import BatchedSimCLRAugment, RandomResizedCrop, resized_crop
from data.datasets import FileImages, read_image
from data.keyed_random import ViewKeys
from utils.errors import UserError

BOX = ("top", "left", "h", "w")


# ---- the workers' share: bytes, sizes from the headers, boxes ----------------------------------------------

class TreeBytes(Dataset):
    """The workers' share on the decode path: key ``(epoch, index)`` -> (data, epoch, index, boxes): the file's bytes
    as a uint8 (n,) tensor and the (2, 4) int64 boxes (top, left, h, w) of views 0 and 1.

    The image size comes from the file's header (PIL ``Image.open``, no decode); the boxes are ``augment.crop_params``
    of the views' keys (seed, epoch, index, view), as ``TwoCrops`` draws them, so the views are the worker path's.
    """

    def __init__(self, images: FileImages, augment: BatchedSimCLRAugment, seed: int = 0) -> None:
        self.paths, self.augment, self.seed = images.paths, copy.deepcopy(augment).cpu(), seed  # workers use no GPU

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        epoch, i = key
        path = self.paths[i]
        try:
            data = np.fromfile(path, dtype=np.uint8)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size  # PIL's size is (width, height)
        except Exception as e:  # as read_image: PIL raises many types for corrupt headers
            raise UserError(f"cannot decode image {path} ({type(e).__name__}: {e}): delete or replace the "
                            f"file") from None
        index = torch.tensor([i])
        boxes = torch.stack([torch.cat([p[k] for k in BOX]) for p in                                   # (2, 4)
                             (self.augment.crop_params(ViewKeys(index, self.seed, epoch, view), height, width)
                              for view in (0, 1))])
        return torch.from_numpy(data), epoch, i, boxes


def collate_bytes(batch) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """DataLoader ``collate_fn`` of ``TreeBytes``: (the files' bytes, epochs (B,), indices (B,), boxes (B, 2, 4)).
    The byte tensors are views of one buffer, made in shared memory in a worker as ``default_collate`` does: one
    segment of /dev/shm per batch, not one per file."""
    data, epochs, indices, boxes = zip(*batch)
    sizes = [len(d) for d in data]
    out = None
    if get_worker_info() is not None:
        out = data[0].new(data[0]._typed_storage()._new_shared(sum(sizes), device=data[0].device))
    flat = torch.cat(data, out=out)                                                                # (sum n,)
    return list(flat.split(sizes)), torch.tensor(epochs), torch.tensor(indices), torch.stack(boxes)


def batch_bytes(batch_size: int, mean_file_bytes: int) -> int:
    """Bytes of one batch of ``TreeBytes`` (what a worker puts in /dev/shm): the files' bytes, the int64 (B,) epochs
    and indices and the int64 (B, 2, 4) boxes (``crop_batch_bytes`` of data/loaders.py for the worker path's)."""
    return batch_size * (mean_file_bytes + 8 + 8 + 2 * 4 * 8)


# ---- the device's share: decode, cut, finish ----------------------------------------------------------------

_SOF = {0xC0, 0xC1, 0xC2}  # Huffman-coded frames: baseline, extended sequential, progressive
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 have no length field


def is_batch_jpeg(data: torch.Tensor) -> bool:
    """Whether a file's bytes take the batched decode: a complete JPEG (SOI at the start, EOI at the end), of an
    8-bit Huffman-coded frame (baseline, extended or progressive) of 1 (grayscale) or 3 components in YCbCr. The
    others go to PIL: CMYK and YCCK (4 components, or Adobe APP14's transform 2), RGB-coded JPEGs (Adobe's
    transform 0, or components named R, G, B without JFIF), 12-bit, lossless and arithmetic-coded JPEGs, any file
    cut short or followed by trailing bytes, and any other format (a PNG named .JPEG)."""
    b = memoryview(data.numpy())  # no copy
    if len(b) < 4 or b[:2] != b"\xff\xd8" or b[-2:] != b"\xff\xd9":
        return False
    pos, jfif, adobe = 2, False, None
    while pos + 4 <= len(b):
        if b[pos] != 0xFF:
            return False  # not a marker where one must be
        marker = b[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        length = int.from_bytes(b[pos + 2:pos + 4], "big")
        seg = b[pos + 4:pos + 2 + length]
        if marker == 0xE0 and seg[:5] == b"JFIF\0":
            jfif = True
        elif marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe = seg[11]  # the colour transform: 0 RGB or CMYK, 1 YCbCr, 2 YCCK
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame (not DHT, JPG, DAC)
            if marker not in _SOF or len(seg) < 6 or seg[0] != 8:
                return False
            ncomp = seg[5]
            ids = bytes(seg[6 + 3 * c] for c in range(ncomp) if 6 + 3 * c < len(seg))
            if ncomp == 1:
                return True
            return ncomp == 3 and adobe not in (0, 2) and not (ids == b"RGB" and not jfif and adobe is None)
        elif marker == 0xDA:  # start of scan before any frame
            return False
        pos += 2 + length
    return False


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """One ``decode_jpeg`` call on a list (nvJPEG's batched decode on CUDA), RGB, EXIF orientation not applied."""
    from torchvision.io import ImageReadMode, decode_jpeg  # here: torchvision means to remove it (TorchCodec's)
    with quiet_codecs():
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=False)


@contextlib.contextmanager
def quiet_codecs():
    """Without torchvision 0.29's warning that its decoders are deprecated in favour of TorchCodec's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision",
                                DeprecationWarning)
        yield


def _read_pil(path: str, device: torch.device) -> torch.Tensor:
    """The worker path's decode (read_image: PIL, to RGB; a UserError naming the file) as a (3, H, W) uint8 tensor."""
    return pil_to_tensor(read_image(path)).to(device)


def decode_batch(data: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    """Every file decoded to a (3, H, W) uint8 tensor on ``device``, as read_image decodes it: the JPEGs that
    ``is_batch_jpeg`` admits in one batched ``decode_jpeg`` call (nvJPEG on CUDA), the others one by one with
    read_image, then moved to ``device``. When the batched call fails as a whole, its files are decoded one by one
    and a file that ``decode_jpeg`` refuses goes to read_image too, which raises the UserError naming it when PIL
    cannot decode it either (a corrupt file)."""
    out: list[torch.Tensor | None] = [None] * len(data)
    batch = [i for i, d in enumerate(data) if is_batch_jpeg(d)]
    if batch:
        try:
            decoded = _decode_jpegs([data[i] for i in batch], device)
        except RuntimeError:  # torchvision returns nothing when one file fails: find it
            decoded = []
            for i in batch:
                try:
                    decoded.append(_decode_jpegs([data[i]], device)[0])
                except RuntimeError:
                    decoded.append(_read_pil(paths[i], device))
        for i, x in zip(batch, decoded):
            out[i] = x
    return [x if x is not None else _read_pil(paths[i], device) for i, x in enumerate(out)]


def cut_crops(images: list[torch.Tensor], boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The random resized crops of views 0 and 1, each (B, 3, size, size) uint8 on the images' device: each box of
    ``boxes`` (B, 2, 4) (top, left, h, w) of its (3, H, W) uint8 image resized as the workers' PIL resize does it
    (``RandomResizedCrop.cut``), in float32 batched matmuls (``pil_resize``)."""
    sides = torch.tensor([img.shape[-2:] for img in images])                                       # (B, 2) H, W
    top, left, h, w = boxes.unbind(2)                                                               # (B, 2) each
    bad = ~((h > 0) & (w > 0) & (top >= 0) & (left >= 0) & (top + h <= sides[:, :1]) & (left + w <= sides[:, 1:]))
    if bad.any():
        i, view = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"crop box {boxes[i, view].tolist()} (top, left, h, w) outside a {sides[i, 0]}x"
                         f"{sides[i, 1]} image: were the boxes drawn for another image size?")
    device = images[0].device
    crops = torch.empty(2, len(images), 3, size, size, dtype=torch.uint8, device=device)
    for group in _frame_groups(sides):
        # The group's images in the top-left corners of one frame, the size of its largest: the resampling weights
        # of a box are zero outside it (data/batched_augment.resized_crop), so the padding is never read.
        frame = torch.zeros(len(group), 3, *sides[group].max(0).values.tolist(), dtype=torch.uint8, device=device)
        for k, i in enumerate(group):
            frame[k, :, :sides[i, 0], :sides[i, 1]] = images[i]
        index = torch.tensor(group)
        for view in (0, 1):
            crops[view, index.to(device)] = pil_resize(frame, *(part[index, view] for part in (top, left, h, w)), size)
    return crops[0], crops[1]


def pil_resize(frame: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
               size: int) -> torch.Tensor:
    """PIL's antialiased bicubic resize of each box (top, left, h, w: (G,) CPU int tensors) of ``frame`` (G, 3, H, W)
    uint8 to size x size: (G, 3, size, size) uint8. The filter is the in-memory path's ``resized_crop``; as in PIL,
    the two 1-D passes run in PIL's order (``pil_vertical_first``) with the rows between them rounded and clipped to
    0..255 (``pil_rows``), so a pass that overshoots next to saturated pixels is clipped where PIL clips it and the
    crops differ from PIL's by its fixed-point weights' rounding alone (1 level at most, tests)."""
    out = torch.empty(len(frame), 3, size, size, dtype=torch.uint8, device=frame.device)
    vertical = pil_vertical_first(h, w, size)
    for first in vertical.unique().tolist():
        k = (vertical == first).nonzero()[:, 0]
        on_device = k.to(frame.device)
        x = (frame if len(k) == len(frame) else frame[on_device]).float().div_(255.0)                # (g, 3, H, W)
        if first:   # the vertical pass first: resized_crop's first pass runs along the last axis
            y = resized_crop(x.transpose(2, 3), left[k], top[k], w[k], h[k], size, pil_rows).transpose(2, 3)
        else:
            y = resized_crop(x, top[k], left[k], h[k], w[k], size, pil_rows)
        out[on_device] = y.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out


PIL_MAJOR = int(PIL.__version__.split(".")[0])


def pil_vertical_first(h: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor:
    """(G,) bool: whether PIL resizes an h x w crop to size x size with the vertical pass first. Pillow 13 does when
    the height shrinks, by more than twice as many pixels as the width (python-pillow/Pillow#9549); older
    Pillows always run the horizontal pass first."""
    if PIL_MAJOR < 13:
        return torch.zeros(h.shape, dtype=torch.bool)
    return (h > size) & (h - size > 2 * (w - size))


def pil_rows(rows: torch.Tensor) -> None:
    """In place: the first pass's rows of values in [0, 1] as PIL keeps them, rounded to levels of 255 and clipped."""
    rows.mul_(255.0).round_().clamp_(0, 255).div_(255.0)


FRAME_LIMIT = 2**26  # pixel values of one frame of cut_crops (256 MiB in float32): a few of ImageNet's giants at most


def _frame_groups(sides: torch.Tensor) -> list[list[int]]:
    """The images (by index) cut together: by area, as many in a row as fit a frame of FRAME_LIMIT values (every
    image in the frame of the group's largest height and width), at least one."""
    groups, group, top_h, top_w = [], [], 0, 0
    for i in sorted(range(len(sides)), key=lambda i: int(sides[i, 0] * sides[i, 1])):
        h, w = max(top_h, int(sides[i, 0])), max(top_w, int(sides[i, 1]))
        if group and (len(group) + 1) * 3 * h * w > FRAME_LIMIT:
            groups.append(group)
            group, h, w = [], int(sides[i, 0]), int(sides[i, 1])
        group.append(i)
        top_h, top_w = h, w
    return groups + [group]


class DecodedTwoViews:
    """``ImageTreeTwoViews`` on the decode path: wraps a DataLoader of ``TreeBytes`` batches (``collate_bytes``) and
    yields (x1, x2), (B, 3, S, S) float32 normalised on ``device``: each batch decoded there (``decode_batch``), its
    boxes cut (``cut_crops``) and the views finished by ``augment`` with their keys (seed, epoch, index, view)
    without redoing the crop. The loader needs no ``pin_memory``: decode_jpeg reads the bytes from the host."""

    def __init__(self, loader, augment: BatchedSimCLRAugment, images: FileImages, device: torch.device,
                 seed: int = 0) -> None:
        if not isinstance(augment.pipeline[0], RandomResizedCrop):
            raise ValueError(f"the decode path cuts torchvision's crop (antialiased bicubic), not "
                             f"{type(augment.pipeline[0]).__name__}: use the worker path for this pipeline")
        self.loader, self.augment, self.paths, self.device, self.seed = loader, augment, images.paths, device, seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for data, epoch, idx, boxes in self.loader:
            images = decode_batch(data, [self.paths[i] for i in idx.tolist()], self.device)   # B x (3, H, W) uint8
            crops = cut_crops(images, boxes, self.augment.size)                               # 2 x (B, 3, S, S)
            epoch, idx = epoch.to(self.device), idx.to(self.device)                           # (B,)
            yield tuple(self.augment(c, ViewKeys(idx, self.seed, epoch, view), crop=False)
                        for view, c in enumerate(crops))
