"""Run by test_distributed.py under torch.distributed.run: train, then save this rank's weights
to WEIGHTS_DIR/rank{RANK}.safetensors so the test can compare the ranks (training itself writes
only from rank 0)."""
import os
import sys

from safetensors.torch import save_file

from maskrcnn.engine.config import load_config
from maskrcnn.engine.train import train

if __name__ == "__main__":
    weights_dir, *overrides = sys.argv[1:]
    result = train(load_config(None, overrides))
    state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, os.path.join(weights_dir, f"rank{os.environ['RANK']}.safetensors"))
