"""torchvision's ResNet-50 (v1.5) rebuilt with torch.nn, for benchmarks (torchvision is not
installable here). Parameter names and shapes equal torchvision's ``resnet50()`` state dict, so
the parity fixture's ``.pth`` loads into it with ``load_state_dict``.
"""

import torch
from torch import nn


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_channels: int, width: int, stride: int):
    super().__init__()
    out = width * self.expansion
    self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or in_channels != out:
      self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(out))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + identity)


class ResNet50(nn.Module):
  """torchvision.models.resnet50 with a configurable base width (64 = the real network)."""

  def __init__(self, width: int = 64, stage_sizes=(3, 4, 6, 3), num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    channels = width
    for i, blocks in enumerate(stage_sizes):
      stage_width = width * 2**i
      layers = []
      for b in range(blocks):
        layers.append(Bottleneck(channels, stage_width, 2 if (b == 0 and i > 0) else 1))
        channels = stage_width * Bottleneck.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*layers))
    self.num_stages = len(stage_sizes)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(channels, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f'layer{i + 1}')(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))
