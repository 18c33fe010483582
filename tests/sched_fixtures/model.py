"""A tiny model for the schedule fixtures: ``model "model.py:build"``."""

import torch


def build():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    return model.eval(), (torch.zeros(1, 1, 8, 8),)
