"""``fastlmk.reference``: the readable pure-PyTorch reference of every op.

It lives in :mod:`fastlmk.ops.reference`, with the rest of the ops layer; this name is kept
because the reference is documented and used under it. ``fastlmk.reference`` *is* that module
(the same object, not a copy), so that patching one patches what the ops call.
"""

import sys

from fastlmk.ops import reference as _reference

sys.modules[__name__] = _reference
