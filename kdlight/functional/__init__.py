"""Pure tensor maths: distillation losses and explanation-agreement measures."""

from kdlight.functional.agreement import *  # noqa: F401,F403
from kdlight.functional.agreement import __all__ as _agreement
from kdlight.functional.distillation import *  # noqa: F401,F403
from kdlight.functional.distillation import __all__ as _distillation
from kdlight.functional.lm import *  # noqa: F401,F403
from kdlight.functional.lm import __all__ as _lm

__all__ = [*_distillation, *_lm, *_agreement]
