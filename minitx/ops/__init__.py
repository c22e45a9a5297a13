"""Every differentiable op, one :class:`~minitx.tensor.Function` each, grouped by kind.

Each op's ``forward`` works on raw arrays (NumPy or CuPy: ``xp = get_array_module(x)``) and its
``backward`` sits right below it, with the derivative written in the docstring.
"""

from .elementwise import (Abs, Add, Clamp, Cos, Div, Exp, GELU, LeakyReLU, Log, Maximum, Minimum, Mul, Neg,
                          Pow, ReLU, Rsqrt, SiLU, Sigmoid, Sin, Softplus, Sqrt, Sub, Tanh)
from .linalg import Linear, MatMul
from .nn import (CrossEntropy, Dropout, Embedding, LayerNorm, LogSoftmax, LogSumExp, NLLLoss, Normalize,
                 RMSNorm, Rotary, Softmax)
from .reduce import Cumsum, Max, Mean, Min, Prod, Std, Sum, Var
from .shape import (Cast, Concat, Expand, Gather, GetItem, MaskedFill, Permute, RepeatInterleave, Reshape,
                    Stack, ToDevice, Triangle, Where)

__all__ = [
    "Abs", "Add", "Cast", "Clamp", "Concat", "Cos", "CrossEntropy", "Cumsum", "Div", "Dropout", "Embedding",
    "Exp", "Expand", "GELU", "Gather", "GetItem", "LayerNorm", "LeakyReLU", "Linear", "Log", "LogSoftmax",
    "LogSumExp", "MaskedFill", "MatMul", "Max", "Maximum", "Mean", "Min", "Minimum", "Mul", "NLLLoss", "Neg",
    "Normalize", "Permute", "Pow", "Prod", "RMSNorm", "ReLU", "RepeatInterleave", "Reshape", "Rotary", "Rsqrt",
    "SiLU", "Sigmoid", "Sin", "Softmax", "Softplus", "Sqrt", "Stack", "Std", "Sub", "Sum", "Tanh", "ToDevice",
    "Triangle", "Var", "Where",
]
