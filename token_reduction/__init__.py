"""token_reduction: learn which visual tokens matter, then feed vision-language models fewer of them."""

from token_reduction.models import FeatureReconstructor, TokenSelector, TrunkConfig
from token_reduction.selection.base import SelectionMethod, TokenSelection

__version__ = "0.1.0"
__all__ = ["FeatureReconstructor", "SelectionMethod", "TokenSelection", "TokenSelector", "TrunkConfig", "__version__"]
