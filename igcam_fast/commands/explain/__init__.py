"""Explain a whole data set: every image's map, on one GPU or many, resumable.

    igcam-fast explain --data PATH --model SPEC --out DIR [options]
    torchrun --nproc_per_node=N -m igcam_fast explain --data PATH --model SPEC --out DIR [options]

PATH is a folder of images (searched recursively), an ImageFolder-style tree (one sub-folder per
class), a PASCAL VOC folder (JPEGImages + ImageSets/Main/<split>.txt + Annotations) or a text
file of image paths. Images are decoded and resized on DataLoader workers while the model runs.
The maps go to DIR/shards/shard-NNNNNN.npz (numpy, float16 by default, each with a SHA-256
sidecar) with their image ids, targets and scores; DIR/manifest.json describes them (see
docs/explain.md, and igcam_fast.results.open_results to read them back). A run holds an
exclusive lock on DIR; a killed run restarted with the same command verifies and skips every
finished shard and redoes the rest.
"""

# The parts, around one RunContext (context.py):
#   options.py   the command line         world.py      torchrun ranks      discovery.py  the data set
#   targets.py   classes to explain       settings.py   the fingerprint     model_setup.py model, layer, engine
#   lock.py      the folder's lock        folder.py     ownership, --overwrite
#   loading.py   decoding on workers      loop.py       the main loop       progress.py   bar and log lines
#   report.py    overlays and HTML        command.py    one run, start to end

from .command import run
from .loading import load_image_uint8, to_model_input
from .options import ExplainError, add_arguments

NAME = "explain"
HELP = "explain a whole data set (resumable; torchrun for several GPUs or machines)"

__all__ = ["NAME", "HELP", "add_arguments", "run", "ExplainError", "load_image_uint8", "to_model_input"]
