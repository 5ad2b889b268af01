"""Torch definitions of zoo models that torchvision lacks (tools/ only; never imported by onnxprune).

* ``UNet``: a small 4-level U-Net (Conv-BN-ReLU pairs, MaxPool down, ConvTranspose up, skip
  connections by Concat), 3x128x128 in, per-pixel class scores out.
* ``YoloV8``: an ultralytics-YOLOv8-like detector at roughly "n" scale: Conv-BN-SiLU blocks,
  C2f blocks (1x1 conv, Split in two, a chain of bottlenecks, Concat of every branch, 1x1 conv),
  SPPF (three chained MaxPools, Concat), an FPN/PAN neck (Upsample + Concat, strided Conv +
  Concat) and decoupled detection heads at strides 8/16/32 emitting the raw per-level maps
  ``[B, 4 * reg_max + num_classes, H / s, W / s]`` (no decoding, no NMS).
"""

from __future__ import annotations

import torch
from torch import nn

# --------------------------------------------------------------------------------------------
# U-Net


class DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """ConvTranspose 2x upsampling, Concat with the encoder skip, then DoubleConv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * c_out, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 2, base: int = 16) -> None:
        super().__init__()
        c = [base * 2**i for i in range(5)]  # 16, 32, 64, 128, 256
        self.inc = DoubleConv(in_channels, c[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(c[i], c[i + 1])) for i in range(4)
        )
        self.ups = nn.ModuleList(Up(c[i + 1], c[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(c[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)


# --------------------------------------------------------------------------------------------
# YOLOv8-like detector


class ConvBNSiLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = ConvBNSiLU(c, c, 3)
        self.cv2 = ConvBNSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with 2 convolutions: Split the 1x1 output, chain n bottlenecks, Concat all."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBNSiLU(c_in, 2 * self.c, 1)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))  # exports as one Split node
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int = 5) -> None:
        super().__init__()
        c_ = c_in // 2
        self.cv1 = ConvBNSiLU(c_in, c_, 1)
        self.cv2 = ConvBNSiLU(c_ * 4, c_out, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class DetectHead(nn.Module):
    """Decoupled head per level: box branch (4 * reg_max) and class branch, Concat on channels."""

    def __init__(self, num_classes: int, channels: tuple[int, ...], reg_max: int = 16) -> None:
        super().__init__()
        c2 = max(16, channels[0] // 4, reg_max * 4)
        c3 = max(channels[0], min(num_classes, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(
                ConvBNSiLU(c, c2, 3), ConvBNSiLU(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)
            )
            for c in channels
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(
                ConvBNSiLU(c, c3, 3), ConvBNSiLU(c3, c3, 3), nn.Conv2d(c3, num_classes, 1)
            )
            for c in channels
        )

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(
            torch.cat((box(f), cls(f)), 1)
            for f, box, cls in zip(feats, self.cv2, self.cv3, strict=True)
        )


class YoloV8(nn.Module):
    """YOLOv8n-like: backbone (P1..P5 + SPPF), PAN neck, three raw detection outputs."""

    def __init__(self, num_classes: int = 80, width: int = 16, reg_max: int = 16) -> None:
        super().__init__()
        w = [width * 2**i for i in range(5)]  # 16, 32, 64, 128, 256
        # backbone
        self.b0 = ConvBNSiLU(3, w[0], 3, 2)  # P1/2
        self.b1 = ConvBNSiLU(w[0], w[1], 3, 2)  # P2/4
        self.b2 = C2f(w[1], w[1], 1, shortcut=True)
        self.b3 = ConvBNSiLU(w[1], w[2], 3, 2)  # P3/8
        self.b4 = C2f(w[2], w[2], 2, shortcut=True)
        self.b5 = ConvBNSiLU(w[2], w[3], 3, 2)  # P4/16
        self.b6 = C2f(w[3], w[3], 2, shortcut=True)
        self.b7 = ConvBNSiLU(w[3], w[4], 3, 2)  # P5/32
        self.b8 = C2f(w[4], w[4], 1, shortcut=True)
        self.b9 = SPPF(w[4], w[4], 5)
        # neck: top-down (FPN)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n12 = C2f(w[4] + w[3], w[3], 1)
        self.n15 = C2f(w[3] + w[2], w[2], 1)  # P3 out
        # neck: bottom-up (PAN)
        self.n16 = ConvBNSiLU(w[2], w[2], 3, 2)
        self.n18 = C2f(w[2] + w[3], w[3], 1)  # P4 out
        self.n19 = ConvBNSiLU(w[3], w[3], 3, 2)
        self.n21 = C2f(w[3] + w[4], w[4], 1)  # P5 out
        self.detect = DetectHead(num_classes, (w[2], w[3], w[4]), reg_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.b2(self.b1(self.b0(x)))
        p3 = self.b4(self.b3(x))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        t4 = self.n12(torch.cat((self.up(p5), p4), 1))
        o3 = self.n15(torch.cat((self.up(t4), p3), 1))
        o4 = self.n18(torch.cat((self.n16(o3), t4), 1))
        o5 = self.n21(torch.cat((self.n19(o4), p5), 1))
        return self.detect([o3, o4, o5])
