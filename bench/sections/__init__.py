"""The sections of the suite, one module each, in the order they run; each has
``run(preset, device, recorder, models)`` and adds its rows to the recorder."""

from . import accuracy, breakdown, kernels, models, options

SECTIONS = {"models": models.run, "options": options.run, "accuracy": accuracy.run, "breakdown": breakdown.run,
            "kernels": kernels.run}
