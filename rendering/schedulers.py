"""The samplers users know from ComfyUI, as diffusers scheduler classes built from the checkpoint's own config.

ComfyUI picks a sampler (``euler``, ``dpmpp_2m``, ...) and a sigma schedule (``normal``, ``karras``) separately;
diffusers folds both into one scheduler class + options. The names here are ComfyUI's sampler names, with
``_karras`` appended where the Karras schedule is part of the choice (ComfyUI's "dpmpp_2m" + "karras"), so a
ComfyUI user recognises each entry. Nothing here imports diffusers until a scheduler is built.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidParameterError

DEFAULT_SAMPLER = "uni_pc"  # what every render used before samplers were selectable; default renders stay identical

# The keys of a scheduler config that describe the model's noise schedule, not one sampler's algorithm.
# A fresh scheduler is built from these only: after a run with UniPC the pipeline holds UniPC's config, whose
# own keys (solver_type "bh2", ...) must not leak into, say, DPM-Solver's.
MODEL_SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "set_alpha_to_one",
    "rescale_betas_zero_snr",
)


@dataclass(frozen=True)
class SamplerSpec:
    """One selectable sampler: the diffusers class, its options, and what the pipeline call needs for it.

    ``eta`` goes to the pipeline call (only schedulers whose ``step`` takes it use it: DDIM, TCD's gamma).
    ``max_steps``: distilled samplers (LCM, TCD) pick steps out of ``original_inference_steps`` (50).
    ``needs``: a package the class imports lazily (DPM++ SDE's Brownian tree is torchsde's).
    """

    class_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    eta: float = 0.0
    max_steps: int | None = None
    needs: str | None = None
    seeds_noise_sampler: bool = False  # True: the request's seed seeds the scheduler's own noise (SDE samplers)


DISTILLED_MAX_STEPS = 50  # LCMScheduler/TCDScheduler default original_inference_steps

SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec("EulerDiscreteScheduler"),
    "euler_ancestral": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "dpmpp_2m": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": SamplerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}
    ),
    "dpmpp_sde_karras": SamplerSpec(
        "DPMSolverSDEScheduler", {"use_karras_sigmas": True}, needs="torchsde", seeds_noise_sampler=True
    ),
    # SD1.5 predicts noise in latent space: clipping x0 to [-1, 1] (DDIM's default) would be wrong for latents.
    "ddim": SamplerSpec("DDIMScheduler", {"clip_sample": False}),
    "uni_pc": SamplerSpec("UniPCMultistepScheduler"),
    "lcm": SamplerSpec("LCMScheduler", max_steps=DISTILLED_MAX_STEPS),
    # gamma (diffusers' eta) 0.3 is TCD's recommended stochasticity; the pipeline's default eta 0 would remove it.
    "tcd": SamplerSpec("TCDScheduler", eta=0.3, max_steps=DISTILLED_MAX_STEPS),
}
SAMPLER_NAMES = tuple(SAMPLERS)


def check_sampler(name: object, steps: int) -> SamplerSpec:
    """The spec for sampler ``name``, refusing what could only fail inside sampling.

    Raises:
        InvalidParameterError: an unknown name, a sampler whose package is missing, or too many steps for a
            distilled sampler.
    """
    spec = SAMPLERS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise InvalidParameterError(f"sampler is {name!r}; pick one of {', '.join(SAMPLER_NAMES)}.")
    if spec.needs is not None and importlib.util.find_spec(spec.needs) is None:
        raise InvalidParameterError(
            f"sampler {name!r} needs the {spec.needs} package, which is not installed; "
            f"`pip install {spec.needs}` (ComfyUI ships it) or pick another sampler."
        )
    if spec.max_steps is not None and steps > spec.max_steps:
        raise InvalidParameterError(
            f"num_inference_steps is {steps}; sampler {name!r} takes at most {spec.max_steps} (it is made for "
            "4-8 steps with an LCM/TCD LoRA or checkpoint). Lower the steps or pick another sampler."
        )
    return spec


def make_scheduler(name: str, config: Mapping[str, Any], seed: int) -> Any:
    """A fresh diffusers scheduler for sampler ``name`` on the noise schedule of ``config``.

    ``config`` is any scheduler config of the checkpoint (the shipped SD1.5 one, or whatever scheduler ran
    last): only its model-schedule keys are used. ``seed`` seeds the noise an SDE sampler draws itself; the
    others take their noise from the pipeline's generator.
    """
    import diffusers

    spec = SAMPLERS[name]
    base = {key: config[key] for key in MODEL_SCHEDULE_KEYS if key in config}
    options: dict[str, Any] = {**base, **spec.options}
    if spec.seeds_noise_sampler:
        options["noise_sampler_seed"] = seed
    scheduler = getattr(diffusers, spec.class_name).from_config(options)
    if spec.needs == "torchsde":
        scheduler.step = _quiet_brownian_tree(scheduler.step)
    return scheduler


def _quiet_brownian_tree(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` without torchsde's float-rounding complaint; every other warning passes.

    diffusers hands the Brownian tree its end time as a Python float and later queries it at the float32 sigma,
    which can lie 1e-7 beyond it; torchsde then warns "Should have tb<=t1" and clamps, which is exactly right.
    """

    @functools.wraps(step)  # keeps the signature the pipeline inspects for ``generator``/``eta``
    def quiet_step(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Should have t[ab][<>]=t[01]", category=UserWarning)
            return step(*args, **kwargs)

    return quiet_step
