"""Test-only torchrun entry: ``leantrain`` with one fault, process 1 killed (SIGKILL) at a step.

    torchrun --nproc-per-node 2 tests/ddp_entry.py train ...   (LEANTRAIN_TEST_KILL_AT=STEP)
"""

import importlib
import os
import signal
import sys

from leantrain.cli import main

attach = importlib.import_module("leantrain.training.attach")  # the module; `leantrain.attach` is the function

KILL_AT = int(os.environ.get("LEANTRAIN_TEST_KILL_AT", "0"))

if KILL_AT and os.environ.get("RANK") == "1":
    original = attach.Attached._after_step

    def _after_step(self, *args):
        original(self, *args)
        if self.step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)  # as a crash or the OOM killer would

    attach.Attached._after_step = _after_step

sys.exit(main())
