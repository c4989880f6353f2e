import os
import sys

import torch

# Tiny models run fastest on one thread, and a second thread stalls badly when the other core is busy.
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))
