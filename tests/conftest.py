import torch

# Tiny models run fastest on one thread, and CI has two cores shared with Ray workers.
torch.set_num_threads(1)
