"""A tiny SGE network and deterministic data for Runner-level tests (in-process and
in the subprocesses that test_checkpoint_safe_loading starts)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch.utils.data import Dataset

from mmplug import SGE


class TinyNet(BaseModel):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.sge = SGE(in_channels=16, groups=4)
        self.head = nn.Linear(16, 4)

    def forward(self, inputs, labels=None, mode='tensor'):
        x = self.sge(torch.relu(self.bn(self.conv(inputs)))).mean((2, 3))
        logits = self.head(x)
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


class Synthetic(Dataset):
    """Deterministic in-memory data, no augmentation."""

    def __init__(self, n=16, size=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])
