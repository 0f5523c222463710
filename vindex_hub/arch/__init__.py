"""Architecture adapters; importing this package registers the built-in families."""

from . import (  # noqa: F401  (register)
    catalog,
    dbrx,
    deepseek_v3,
    deepseek_v4,
    ernie4_5_vl_moe,
    glm4_moe,
    gpt_oss,
    llama4,
    mixtral,
    muse_spark,
    olmoe,
    qwen_moe,
)
from .base import MoEArchitecture
from .registry import (
    get_architecture,
    refused_architectures,
    register_architecture,
    supported_architectures,
)

__all__ = [
    "MoEArchitecture",
    "get_architecture",
    "refused_architectures",
    "register_architecture",
    "supported_architectures",
]
