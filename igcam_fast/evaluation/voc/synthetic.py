"""A VOC-layout multi-label data set of handwritten digits on cluttered canvases, and two small
classifiers with the structure of the paper's models, trained on it.

Data (deterministic from the seed): 64×64 RGB canvases, a smooth random background, 3–7 clutter
shapes (lines, rectangles, ellipses in random colours, some as bright as the digits), then one to
three digits from scikit-learn's bundled ``load_digits`` (8×8, 1797 samples; the train and test
splits use disjoint samples), scaled to 12–30 px and placed without overlapping, in random bright
colours. Boxes are the digits' tight extents, written as VOC XML; digits smaller than 16 px are
marked ``difficult``. Classes: "zero" … "nine".

Models (``load_model`` factories, so the evaluate command takes them as ``module:factory``):
    vgg_style     plain 3×3 conv-BN-ReLU stacks with max-pooling (16-32-32-64-64-128-128), adaptive
                  pooling to 4×4, FC-ReLU-dropout-FC head; explained at its last conv ReLU, as
                  VGG16 is at features.29 (8×8 here)
    resnet_style  a strided stem, three stages of residual basic blocks (BatchNorm), global
                  average pooling and a linear head; explained at the last stage's output, as
                  ResNet-50 is at layer4 (8×8 here)
Both are trained with BCE-with-logits (multi-label, sigmoid confidence), seeded; weights are
cached outside the repository (``~/.cache/igcam_fast/synthetic`` or ``$IGCAM_FAST_CACHE``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import torch
from torch import nn

from igcam_fast.models import ModelSpec

DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INPUT_SIZE = 64
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
DATA_VERSION = 1


def cache_dir(path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path)
    return Path(os.environ.get("IGCAM_FAST_CACHE", Path.home() / ".cache" / "igcam_fast")) / "synthetic"


# ---- the data set --------------------------------------------------------------------------------

def _digits(split: str):
    from sklearn.datasets import load_digits

    d = load_digits()
    cut = 1400  # the first 1400 samples for train, the other 397 for test: no digit image in both
    sl = slice(0, cut) if split == "train" else slice(cut, None)
    return d.images[sl].astype(np.float32) / 16.0, d.target[sl]


def _canvas(rng: np.random.Generator, size: int, digits, labels):
    from PIL import Image, ImageDraw

    # smooth background: a low-resolution random field upsampled
    low = rng.uniform(0, 0.45, size=(4, 4, 3)).astype(np.float32)
    bg = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                    dtype=np.float32) / 255
    bg = bg + rng.normal(0, 0.03, size=bg.shape).astype(np.float32)
    image = Image.fromarray((bg.clip(0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(c) for c in rng.integers(40, 256, size=3))
        x1, y1 = (int(v) for v in rng.integers(0, size, size=2))
        x2, y2 = x1 + int(rng.integers(-size // 3, size // 3)), y1 + int(rng.integers(-size // 3, size // 3))
        kind = rng.integers(0, 3)
        box = [min(x1, x2), min(y1, y2), max(x1, x2) + 1, max(y1, y2) + 1]
        width = int(rng.integers(1, 3))
        if kind == 0:
            draw.line([x1, y1, x2, y2], fill=colour, width=width)
        elif kind == 1:
            draw.rectangle(box, outline=colour, width=width)
        else:
            draw.ellipse(box, outline=colour, width=width)
    canvas = np.asarray(image, dtype=np.float32) / 255
    objects = []
    placed = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(30):
            s = int(rng.integers(12, 31))
            x0, y0 = (int(v) for v in rng.integers(0, size - s + 1, size=2))
            if all(x0 + s <= a or a + b <= x0 or y0 + s <= c or c + b <= y0 for a, c, b in placed):
                break
        else:
            continue
        placed.append((x0, y0, s))
        k = int(rng.integers(0, len(digits)))
        glyph = np.asarray(Image.fromarray((digits[k] * 255).astype(np.uint8)).resize((s, s), Image.BILINEAR),
                           dtype=np.float32) / 255
        alpha = glyph.clip(0, 1)[..., None]
        colour = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        colour[rng.integers(0, 3)] *= rng.uniform(0.2, 1.0)
        region = canvas[y0:y0 + s, x0:x0 + s]
        canvas[y0:y0 + s, x0:x0 + s] = region * (1 - alpha) + colour * alpha
        ys, xs = np.nonzero(glyph > 0.25)
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        objects.append((DIGIT_CLASSES[int(labels[k])], box, s < 16))
    return (canvas.clip(0, 1) * 255).round().astype(np.uint8), objects


def _xml(image_id: str, size: int, objects) -> str:
    parts = [f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>",
             "<source><database>igcam_fast synthetic digits</database></source>",
             f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size><segmented>0</segmented>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(f"<object><name>{escape(name)}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def generate(root: str | Path, *, seed: int = 0, n_train: int = 2000, n_test: int = 300, size: int = 64) -> Path:
    """Write the data set in VOC layout under ``root`` (VOC2007-style folders directly in it)."""
    from PIL import Image

    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    next_id = 0
    for split_no, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        rng = np.random.default_rng([seed, split_no])
        digits, labels = _digits(split)
        ids = []
        for _ in range(n):
            image_id = f"{next_id:06d}"
            next_id += 1
            pixels, objects = _canvas(rng, size, digits, labels)
            Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            (root / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, size, objects))
            ids.append(image_id)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def ensure_dataset(*, seed: int = 0, n_train: int = 2000, n_test: int = 300, cache: str | Path | None = None) -> Path:
    """The cached data set for these settings, generated on first use."""
    root = cache_dir(cache) / f"digits_v{DATA_VERSION}_seed{seed}_train{n_train}_test{n_test}"
    done = root / "COMPLETE"
    if not done.is_file():
        generate(root, seed=seed, n_train=n_train, n_test=n_test)
        done.write_text("ok\n")
    return root


# ---- the models -------------------------------------------------------------------------------------

class VGGStyle(nn.Module):
    """Plain conv stacks (conv-BN-ReLU, as torchvision's vgg16_bn) with max-pooling, adaptive pooling and
    an FC-ReLU-dropout-FC head. Without BatchNorm this small plain stack stalls for many epochs on
    the data set before it starts to learn; with it, it trains in a few."""

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64, 128)):
        super().__init__()
        layers, c = [], 3
        for i, w in enumerate(widths):
            for _ in range(1 if i == 0 else 2):
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, 256), nn.ReLU(inplace=True), nn.Dropout(0.3),
                                        nn.Linear(256, num_classes))
        #: the last conv ReLU (before the last max-pooling), as features.29 in VGG16
        self.target_layer = f"features.{len(layers) - 2}"
        for m in self.modules():  # torchvision's VGG initialisation (plain deep ReLU stacks need it)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNetStyle(nn.Module):
    """A strided stem, residual stages, global average pooling and a linear head (like ResNet-50)."""

    def __init__(self, num_classes: int = 10, widths=(24, 48, 96)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(widths[0], widths[0], 1)
        self.layer2 = BasicBlock(widths[0], widths[1], 2)
        self.layer3 = BasicBlock(widths[1], widths[2], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        self.target_layer = "layer3"

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.avgpool(x).flatten(1))


ARCHITECTURES = {"vgg_style": VGGStyle, "resnet_style": ResNetStyle}


def _spec(arch: str) -> ModelSpec:
    net = ARCHITECTURES[arch](len(DIGIT_CLASSES)).eval()
    return ModelSpec(net, net.target_layer, MEAN, STD, INPUT_SIZE, list(DIGIT_CLASSES))


def vgg_style() -> ModelSpec:
    """load_model factory: the VGG-style network (random weights; give --weights)."""
    return _spec("vgg_style")


def resnet_style() -> ModelSpec:
    """load_model factory: the ResNet-style network (random weights; give --weights)."""
    return _spec("resnet_style")


# ---- training -------------------------------------------------------------------------------------

def load_split_tensors(root: str | Path, split: str):
    """(x (N, 3, 64, 64) normalised, y (N, 10) multi-hot incl. difficult objects) of a split."""
    from igcam_fast.images.photos import load_image, to_input
    from igcam_fast.evaluation.voc.dataset import load_voc

    images = load_voc(root, split, DIGIT_CLASSES, check_images=False)
    xs = torch.cat([to_input(load_image(im.path), INPUT_SIZE, MEAN, STD) for im in images])
    ys = torch.zeros(len(images), len(DIGIT_CLASSES))
    for i, im in enumerate(images):
        for o in im.objects:
            ys[i, DIGIT_CLASSES.index(o.name)] = 1
    return xs, ys


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import average_precision_score

    y, s = labels.numpy(), scores.double().numpy()
    present = y.sum(axis=0) > 0
    return float(average_precision_score(y[:, present], s[:, present], average="macro"))


def train(arch: str, root: str | Path, *, epochs: int = 16, seed: int = 0, batch_size: int = 64, lr: float = 3e-3,
          log=print) -> tuple[nn.Module, dict]:
    """Train one architecture on the train split; returns (model in eval mode, info with test mAP)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    x, y = load_split_tensors(root, "train")
    xt, yt = load_split_tensors(root, "test")
    net = ARCHITECTURES[arch](len(DIGIT_CLASSES))
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            xb = x[idx].contiguous(memory_format=torch.channels_last)
            loss = loss_fn(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"  {arch} epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")
    net.eval()
    with torch.no_grad():
        scores = torch.cat([net(xt[i:i + 256]) for i in range(0, len(xt), 256)])
    info = dict(arch=arch, epochs=epochs, seed=seed, train_images=len(x), test_images=len(xt),
                test_mAP=mean_average_precision(scores, yt), train_seconds=time.perf_counter() - start,
                threads=torch.get_num_threads())
    net = net.to(memory_format=torch.contiguous_format)
    return net, info


def ensure_trained(arch: str, root: str | Path, *, epochs: int = 16, seed: int = 0, cache: str | Path | None = None,
                   log=print) -> tuple[Path, dict]:
    """(weights file, info) for ``arch`` trained on the data set at ``root``, cached by settings."""
    key = hashlib.sha1(f"{Path(root).resolve()}|{arch}|{epochs}|{seed}|v2".encode()).hexdigest()[:12]
    folder = cache_dir(cache) / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{arch}_{key}.pt"
    info_file = weights.with_suffix(".json")
    if weights.is_file() and info_file.is_file():
        return weights, json.loads(info_file.read_text())
    if log:
        log(f"training {arch} on {root} ({epochs} epochs, seed {seed}) ...")
    net, info = train(arch, root, epochs=epochs, seed=seed, log=log)
    tmp = weights.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(weights)
    info_file.write_text(json.dumps(info, indent=1))
    if log:
        log(f"  {arch}: test mAP {info['test_mAP']:.3f} after {info['train_seconds']:.0f} s -> {weights}")
    return weights, info
