"""Plain ``nn.Module`` networks: usable without Lightning."""

from token_reduction.models.backbone import FeatureStandardizer, TokenTrunk, TrunkConfig
from token_reduction.models.reconstructor import FeatureReconstructor, MaskedSequence
from token_reduction.models.selector import TokenSelector

__all__ = ["FeatureReconstructor", "FeatureStandardizer", "MaskedSequence", "TokenSelector", "TokenTrunk", "TrunkConfig"]
