"""U^2-Net (Qin et al. 2020, "U2-Net: Going Deeper with Nested U-Structure for Salient Object
Detection") at random init, exported to ONNX: the compute of rembg's stock ``u2net.onnx``
(176 MB float32, ~44M parameters, input 1x3x320x320, outputs d0..d6 after a sigmoid; rembg
reads d0) without its weights, which are not on this machine and are never downloaded.

Bench code only, not a project dependency. Channel widths follow the authors' public
model/u2net.py (class U2NET, the full model; U2NETP is the 4.7 MB small one).

    .venv/bin/python bench/u2net_arch.py --out /tmp/u2home/u2net-random.onnx
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 320  # rembg's u2net sessions feed 320x320
# rembg's u2net.onnx for comparison: 176 MB (rembg release v0.0.0; the paper's 176.3 MB),
# 44.0M parameters (the paper's figure).
REAL_U2NET_MB = 176.3
REAL_U2NET_PARAMS_M = 44.0

# (in, mid, out) of each stage of the full U2NET; RSU depth by stage name.
ENCODER = [("stage1", 7, 3, 32, 64), ("stage2", 6, 64, 32, 128), ("stage3", 5, 128, 64, 256),
           ("stage4", 4, 256, 128, 512), ("stage5", 0, 512, 256, 512),
           ("stage6", 0, 512, 256, 512)]
DECODER = [("stage5d", 0, 1024, 256, 512), ("stage4d", 4, 1024, 128, 256),
           ("stage3d", 5, 512, 64, 128), ("stage2d", 6, 256, 32, 64),
           ("stage1d", 7, 128, 16, 64)]
SIDE_CHANNELS = [64, 64, 128, 256, 512, 512]  # from stage1d, 2d, 3d, 4d, 5d, stage6


class ConvBnRelu(nn.Module):
    """3x3 conv (dilated), batch norm, ReLU: the building block of every RSU."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _up_to(x, ref):
    return F.interpolate(x, size=ref.shape[2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block of depth L (RSU-7..RSU-4): L-1 encoder convs with a 2x max-pool
    between them, a dilation-2 bottom conv, L-1 decoder convs on the concatenated skip,
    plus the input conv's output as the residual."""

    def __init__(self, depth: int, cin: int, mid: int, cout: int):
        super().__init__()
        self.conv_in = ConvBnRelu(cin, cout)
        self.enc = nn.ModuleList([ConvBnRelu(cout, mid)] +
                                 [ConvBnRelu(mid, mid) for _ in range(depth - 2)])
        self.bottom = ConvBnRelu(mid, mid, dilation=2)
        self.dec = nn.ModuleList([ConvBnRelu(2 * mid, mid) for _ in range(depth - 2)] +
                                 [ConvBnRelu(2 * mid, cout)])

    def forward(self, x):
        xin = self.conv_in(x)
        skips, h = [], xin
        for i, conv in enumerate(self.enc):
            if i:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for i, (conv, skip) in enumerate(zip(self.dec, reversed(skips))):
            if i:  # the bottom conv keeps the deepest skip's size; the rest go up 2x
                h = _up_to(h, skip)
            h = conv(torch.cat((h, skip), 1))
        return h + xin


class RSU4F(nn.Module):
    """RSU-4F: no pooling, dilations 1, 2, 4, 8 instead (the low-resolution stages)."""

    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.conv_in = ConvBnRelu(cin, cout)
        self.enc = nn.ModuleList([ConvBnRelu(cout, mid, 1), ConvBnRelu(mid, mid, 2),
                                  ConvBnRelu(mid, mid, 4)])
        self.bottom = ConvBnRelu(mid, mid, dilation=8)
        self.dec = nn.ModuleList([ConvBnRelu(2 * mid, mid, 4), ConvBnRelu(2 * mid, mid, 2),
                                  ConvBnRelu(2 * mid, cout, 1)])

    def forward(self, x):
        xin = self.conv_in(x)
        skips, h = [], xin
        for conv in self.enc:
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for conv, skip in zip(self.dec, reversed(skips)):
            h = conv(torch.cat((h, skip), 1))
        return h + xin


def _stage(depth: int, cin: int, mid: int, cout: int) -> nn.Module:
    return RSU4F(cin, mid, cout) if depth == 0 else RSU(depth, cin, mid, cout)


class U2Net(nn.Module):
    """Six encoder stages, five decoder stages, six side outputs fused by a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleDict({n: _stage(*a) for n, *a in ENCODER})
        self.decoder = nn.ModuleDict({n: _stage(*a) for n, *a in DECODER})
        self.sides = nn.ModuleList([nn.Conv2d(c, 1, 3, padding=1) for c in SIDE_CHANNELS])
        self.fuse = nn.Conv2d(6, 1, 1)

    def forward(self, x):
        enc = []
        h = x
        for i, stage in enumerate(self.encoder.values()):
            if i:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            h = stage(h)
            enc.append(h)
        dec = [enc[-1]]  # stage6 output feeds the first decoder stage and side 6
        h = enc[-1]
        for stage, skip in zip(self.decoder.values(), reversed(enc[:-1])):
            h = stage(torch.cat((_up_to(h, skip), skip), 1))
            dec.append(h)
        # dec: stage6, 5d, 4d, 3d, 2d, 1d -> sides in the order d1 (finest) .. d6
        feats = list(reversed(dec))
        sides = [side(f) for side, f in zip(self.sides, feats)]
        sides = [sides[0]] + [_up_to(s, sides[0]) for s in sides[1:]]
        d0 = self.fuse(torch.cat(sides, 1))
        return tuple(torch.sigmoid(d) for d in [d0] + sides)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(seed: int = 0) -> U2Net:
    torch.manual_seed(seed)
    model = U2Net().eval()
    # Random-init batch-norm statistics are the identity; give them spread so the
    # activations (and the exported, folded weights) look like a trained net's.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def export(path: Path, seed: int = 0) -> tuple[int, int]:
    """Write the ONNX model (opset 17, BN folded into the convs as in rembg's file) to
    ``path`` atomically; return (parameter count, file size)."""
    model = build(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    dummy = torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(tmp), opset_version=17, dynamo=False,
                          do_constant_folding=True, input_names=["input.1"],
                          output_names=[f"d{i}" for i in range(7)])
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return parameter_count(model), path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    args = ap.parse_args()
    params, size = export(args.out)
    print(f"U^2-Net random init: {params:,} parameters (paper {REAL_U2NET_PARAMS_M}M), "
          f"{args.out} {size:,} bytes = {size / 1e6:.1f} MB (rembg's u2net.onnx ~{REAL_U2NET_MB} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
