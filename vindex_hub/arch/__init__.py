"""Architecture adapters; importing this package registers the built-in ones."""

from .base import MoEArchitecture, get_architecture, register_architecture, supported_architectures
from . import deepseek_v4  # noqa: F401  (registers "deepseek_v4")

__all__ = ["MoEArchitecture", "get_architecture", "register_architecture", "supported_architectures"]
