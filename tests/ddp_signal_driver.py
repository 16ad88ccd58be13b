"""``torchrun ... tests/ddp_signal_driver.py STEP <train flags>``: rank 0 sends itself SIGTERM
after training step STEP, as a cluster's pre-emption notice would (tests of DDP stops)."""

import os
import signal
import sys

from spectformer import cli, train

stop_step = int(sys.argv[1])
original_step = train.Trainer._train_step


def step_then_signal(self, images, target, *args, **kwargs):
    loss = original_step(self, images, target, *args, **kwargs)
    if self.step + 1 == stop_step and self.info.is_main:
        os.kill(os.getpid(), signal.SIGTERM)
    return loss


train.Trainer._train_step = step_then_signal
sys.exit(cli.run(train.main, "spectformer.train", sys.argv[2:]))
