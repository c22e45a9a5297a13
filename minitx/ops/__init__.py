"""Every differentiable op, one :class:`~minitx.tensor.Function` each, grouped by kind.

Each op's ``forward`` works on raw arrays (NumPy or CuPy: ``xp = get_array_module(x)``) and its
``backward`` sits right below it, with the derivative written in the docstring.
"""

from .elementwise import GELU, Abs, Add, Div, Exp, Log, Mul, Neg, Pow, ReLU, Sigmoid, SiLU, Sqrt, Sub, Tanh
from .linalg import Linear, MatMul
from .nn import CrossEntropy, Dropout, Embedding, LayerNorm, LogSoftmax, RMSNorm, Rotary, Softmax
from .reduce import Max, Mean, Sum, Var
from .shape import (Cast, Concat, GetItem, MaskedFill, Permute, RepeatInterleave, Reshape, Stack, ToDevice,
                    Where)
from .elementwise import Clamp, Cos, LeakyReLU, Maximum, Minimum, Rsqrt, Sin, Softplus
from .nn import LogSumExp, NLLLoss, Normalize
from .reduce import Cumsum, Min, Prod, Std
from .shape import Expand, Gather, Triangle

__all__ = [
    "Abs", "Add", "Cast", "Concat", "CrossEntropy", "Div", "Dropout", "Embedding", "Exp", "GELU", "GetItem",
    "LayerNorm", "Linear", "Log", "LogSoftmax", "MaskedFill", "MatMul", "Max", "Mean", "Mul", "Neg", "Permute", "Pow",
    "ReLU", "Reshape", "Sigmoid", "Softmax", "Sqrt", "Stack", "Sub", "Sum", "Tanh", "ToDevice", "Var", "Where",
    "RMSNorm", "RepeatInterleave", "Rotary", "SiLU",
]
__all__ += [
    "Clamp", "Cos", "Cumsum", "Expand", "Gather", "LeakyReLU", "LogSumExp", "Maximum", "Min", "Minimum", "NLLLoss",
    "Normalize", "Prod", "Rsqrt", "Sin", "Softplus", "Std", "Triangle",
]
