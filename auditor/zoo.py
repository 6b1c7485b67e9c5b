"""Architectures the project itself ships (the fixture models). Users' own architectures are passed
with --arch as a torchvision model name or `package.module:callable`."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers: the fixtures' Fashion-MNIST classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def small_cnn(**kwargs) -> SmallCNN:
    return SmallCNN(**kwargs)


class CifarCNN(nn.Module):
    """A common CIFAR-style CNN: five 3x3 convolutions (32-32-64-64-128 channels, ReLU, max-pool after
    the 2nd, 4th and 5th), then a 256-unit hidden layer; about 30 M multiply-adds per 3x32x32 image."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        widths = [in_channels, 32, 32, 64, 64, 128]
        layers = []
        for i in range(5):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1), nn.ReLU()]
            if i in (1, 3, 4):
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * side * side, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def cifar_cnn(**kwargs) -> CifarCNN:
    return CifarCNN(**kwargs)


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem most backdoor research uses on 32x32 inputs: a 3x3
    stride-1 first convolution and no max-pool (about 0.56 G multiply-adds per 32x32 image, 10x the
    ImageNet stem's at that size)."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
