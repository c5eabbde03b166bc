"""A small ResNet for 28/32 px images, the teacher of the distilled students.

torchvision's BasicBlock, with a 3x3 stem and no max-pool (a 7x7/2 stem and pooling would
throw away most of a 28 px image), three stages of widths 32/64/128.
"""
from torch import nn
from torchvision.models.resnet import BasicBlock


def _stage(inplanes, planes, stride):
    down = None
    if stride != 1 or inplanes != planes:
        down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
    return nn.Sequential(BasicBlock(inplanes, planes, stride, down), BasicBlock(planes, planes))


class TeacherCNN(nn.Module):
    def __init__(self, in_chans=1, num_classes=10, width=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(_stage(width, width, 1), _stage(width, 2 * width, 2), _stage(2 * width, 4 * width, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))
