"""Run inside a ComfyUI checkout (``cwd``): the sigmas ComfyUI's KSampler samples at, one JSON line out.

Called by ``test_sampling_schedules.py`` in a fresh interpreter, because importing ComfyUI's modules sets
process-wide state (its argument parser, torch flags, logging) that must not leak into the test session.

    python comfy_sigmas_probe.py '{"pairs": [["euler", "normal"], ...], "steps": [4, 8]}'

Each pair's sigmas come from ``comfy.samplers.calculate_sigmas`` on SD1.5's own model sampling (ComfyUI's
``ModelSamplingDiscrete`` with the SD1.5 config's schedule), with the KSampler's rule for samplers that drop the
penultimate sigma.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    args = json.loads(sys.argv[1])
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True  # set before model_management loads, as the test server runs
    import comfy.model_sampling
    import comfy.samplers
    import comfy.supported_models

    class Sd15Sampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    config = comfy.supported_models.SD15({})  # SD1.5's model config: its sampling_settings are the defaults
    sampling = Sd15Sampling(config)
    discard = sorted(comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS)
    out: dict[str, object] = {"discard_penultimate": discard, "sigmas": {}}
    for sampler, scheduler in args["pairs"]:
        for steps in args["steps"]:
            n = steps + 1 if sampler in discard else steps
            sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, n)
            if sampler in discard:
                sigmas = sigmas[:-2].tolist() + sigmas[-1:].tolist()
            else:
                sigmas = sigmas.tolist()
            out["sigmas"][f"{sampler}/{scheduler}/{steps}"] = sigmas  # type: ignore[index]
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
