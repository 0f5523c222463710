"""GLM-4.5 / 4.6 / 4.5-Air (``glm4_moe``): DeepSeek-V3 tensor names and rules.

The first ``first_k_dense_replace`` layers are dense (4.5: 3, Air: 1); the extra MTP layer
stored past ``num_hidden_layers`` is not a model layer. FP8 releases use the same
``weight_scale_inv`` blocks as DeepSeek-V3.
"""

from __future__ import annotations

from .deepseek_v3 import DeepseekV3Style
from .registry import register_architecture


@register_architecture("glm4_moe")
class Glm4Moe(DeepseekV3Style):
    pass
