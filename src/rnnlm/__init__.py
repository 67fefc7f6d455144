"""rnnlm: a vanilla recurrent language model from its equations.

Importing the package stays light (no torch, no lightning) so that `rnnlm.runtime`
can be embedded where only numpy and onnxruntime are installed.
"""

from rnnlm.errors import RnnlmError

__all__ = ["RnnlmError"]
__version__ = "0.1.0"
