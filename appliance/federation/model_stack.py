"""The model stack (torch, MONAI, :mod:`models`), imported whole by one module.

Flower's simulation runtime loads the ServerApp in a thread while its main thread loads
the ClientApp. Two threads importing MONAI at the same time can deadlock on its circular
imports (``_DeadlockError: deadlock detected by _ModuleLock('monai.networks.layers')``).
:mod:`appliance.federation.server_app` imports this module before anything else heavy,
and :mod:`appliance.federation.client_app` does in every handler that trains or scores
(its module and its ``query`` handlers import neither torch nor MONAI): Python's lock on
*this* module makes a second thread wait until the first has imported the whole stack.
"""

from __future__ import annotations

import monai  # noqa: F401
import torch  # noqa: F401

import models.evaluation
import models.inference
import models.networks
import models.phantoms
import models.training  # noqa: F401
