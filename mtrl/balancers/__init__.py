"""Gradient balancers: per-task gradients of shared parameters ``[T, D]`` -> one direction ``[D]``."""

from mtrl.balancers.base import Balancer
from mtrl.balancers.mean import Mean

__all__ = ["Balancer", "Mean"]
