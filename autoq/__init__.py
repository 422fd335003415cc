"""autoq: per-layer mixed-precision HQQ quantization, searched.

The API is two functions, imported on first use so that `import autoq` stays light:

    model, tokenizer = autoq.load(DIR)      # a folder written by `autoq apply`
    report = autoq.quantize(model, plan)    # a plan applied to your own nn.Module

(see autoq.api). `autoq.quantize` is also the name of an internal module; the
package's class keeps the function under that name when the module is imported.
"""

import sys
import types

__version__ = "0.1.0"


class _Package(types.ModuleType):
    @property
    def load(self):
        from .api import load
        return load

    @property
    def quantize(self):
        from .api import quantize
        return quantize

    @quantize.setter
    def quantize(self, module):  # the import system binding the submodule autoq.quantize
        pass


sys.modules[__name__].__class__ = _Package
