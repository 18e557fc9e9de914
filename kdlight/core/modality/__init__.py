"""Input modalities: how inputs of one kind are grouped into features, perturbed and drawn.

A data module owns one (``datamodule.modality``); :meth:`Modality.for_inputs` guesses one from a
batch's rank for callers without a data module (the only such guess in kdlight).
"""

from kdlight.core.modality.base import MAX_FEATURES_WITHOUT_PATCHES, ChannelsFirst, Modality, figure_to_array
from kdlight.core.modality.image import Image
from kdlight.core.modality.signal import Signal
from kdlight.core.modality.tabular import TOP_FEATURES, Tabular
from kdlight.core.modality.text import Text

__all__ = [
    "Modality",
    "ChannelsFirst",
    "Image",
    "Signal",
    "Tabular",
    "Text",
    "MAX_FEATURES_WITHOUT_PATCHES",
    "TOP_FEATURES",
    "figure_to_array",
]
