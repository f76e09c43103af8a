"""DC's ConvNet, the image classifier that evaluates a synthetic set by training from scratch."""

from __future__ import annotations

from torch import nn
import torch


class ConvNet(nn.Module):
    """[conv 3x3 -> instance norm -> ReLU -> avg pool 2] x depth, then a Linear.

    As in DC, a 28-pixel input is padded to 32 by the first convolution, so every pooling
    halves an even size.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28, width: int = 128, depth: int = 3):
        super().__init__()
        target = -(-image_size // 2**depth) * 2**depth
        pad = (target - image_size) // 2
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size + 2 * pad
        for d in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1 + (pad if d == 0 else 0)),
                nn.GroupNorm(width, width, affine=True),  # DC's "instancenorm"
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2),
            ]
            channels, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
