"""Suite-wide settings: one intra-op thread (the CI machine has 2 cores and the tests use small
tensors, where thread hand-offs cost more than they give)."""
import torch

torch.set_num_threads(1)
