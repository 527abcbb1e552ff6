"""Merge LoRA adapters into one with peft's ``add_weighted_adapter``: task arithmetic, TIES
(Yadav et al. 2023), DARE (Yu et al. 2024), magnitude pruning, each on the adapters' factors
or, for the ``*_svd`` types, on their full deltas re-factored by a truncated SVD.

The merged adapter applies to the same weights as its sources and is saved alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

import harness
from harness import TransformJob, TransformResult, Variant

from harness_plugins.transforms.weights import adapter_config, adapter_file

CombinationType = Literal[
    "linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
    "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd",
]
#: the types that prune each source first, and so read ``density``
PRUNING = {"ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
           "magnitude_prune", "magnitude_prune_svd"}
#: the types that elect a sign per entry, and so read ``majority_sign_method``
ELECTING = {"ties", "ties_svd", "dare_ties", "dare_ties_svd"}
#: TIES keeps the top 20% of each task vector by magnitude (the paper's k = 20)
DEFAULT_DENSITY = 0.2
#: the merged adapter's name in peft, and so the folder peft saves it in
MERGED = "combined"


class MergeOptions(harness.Options):
    # TIES on the full deltas by default. Each source's change is the product
    # scaling * B @ A; independently trained adapters (two seeds, two data sets) have
    # unrelated factors, so pruning and electing signs entry by entry on A and B (``ties``)
    # mixes numbers that mean different things, and ``linear``/``cat``/``svd`` add the deltas
    # up (two sources at weight 1 move the model twice as far). ``ties_svd`` applies TIES
    # where the paper does, to each delta, averages the entries whose signs agree (so the
    # merge stays at its sources' scale), takes adapters of any ranks, and stores the result
    # as a LoRA of the sources' largest rank (``svd_rank`` raises it).
    combination_type: CombinationType = "ties_svd"
    weights: list[float] | None = Field(
        default=None, min_length=1, description="one per source variant; default 1.0 each")
    density: float | None = Field(
        default=None, gt=0, le=1,
        description=f"fraction of each source kept by the pruning types (default "
                    f"{DEFAULT_DENSITY}); not read by the others")
    majority_sign_method: Literal["total", "frequency"] = "total"
    svd_rank: int | None = Field(default=None, gt=0,
                                 description="rank of an *_svd merge; default the largest source's")

    @model_validator(mode="after")
    def _only_options_the_type_reads(self) -> MergeOptions:
        kind = self.combination_type
        if self.density is not None and kind not in PRUNING:
            raise ValueError(f"density is not read by combination_type {kind!r}; it is for "
                             + ", ".join(sorted(PRUNING)))
        if self.svd_rank is not None and not kind.endswith("svd"):
            raise ValueError(f"svd_rank is not read by combination_type {kind!r}; it is for "
                             "the *svd types")
        if "majority_sign_method" in self.model_fields_set and kind not in ELECTING:
            raise ValueError(f"majority_sign_method is not read by combination_type {kind!r}; "
                             "it is for " + ", ".join(sorted(ELECTING)))
        return self

    def density_for_peft(self) -> float | None:
        if self.combination_type not in PRUNING:
            return None
        return self.density if self.density is not None else DEFAULT_DENSITY


def check_sources(sources: list[Variant]) -> None:
    """Every source must be a LoRA adapter peft can merge; errors name the variant."""
    for source in sources:
        if source.kind != "adapter":
            what = "a full-weights" if source.kind == "weights" else f"a {source.kind}"
            raise ValueError(f"merge needs LoRA adapters; {source.name!r} is {what} variant")
        adapter_file(source)
        config = adapter_config(source)
        if config.get("peft_type") != "LORA":
            raise ValueError(f"merge needs LoRA adapters; {source.name!r} is a "
                             f"{config.get('peft_type')} adapter")
        if config.get("use_dora"):
            # add_weighted_adapter combines the low-rank factors only: each DoRA magnitude
            # vector would be dropped and the result would not be a merge of the sources
            raise ValueError(f"merge cannot combine DoRA adapters (peft's "
                             f"add_weighted_adapter drops their magnitude vectors); "
                             f"{source.name!r} is one")


def merge_adapters(job: TransformJob, options: MergeOptions, adapter_names: list[str]) -> Path:
    """Load the sources on their parent weights, merge them with peft, save the merged
    adapter alone; returns its folder."""
    import torch
    from peft import PeftModel

    device = harness.pick_device("auto")
    # The parent's weights only carry the adapters: the merge reads the adapters' factors
    # and deltas, never the base's values, so the device's usual dtype is enough.
    base = harness.load_causal_lm(job.parent_weights, device=device,
                                  dtype=harness.pick_dtype("auto", device),
                                  trust_remote_code=job.model.trust_remote_code)
    model = PeftModel.from_pretrained(base, str(job.sources[0].path),
                                      adapter_name=adapter_names[0])
    for source, name in zip(job.sources[1:], adapter_names[1:]):
        model.load_adapter(str(source.path), adapter_name=name)
    weights = options.weights or [1.0] * len(job.sources)
    names = ", ".join(repr(source.name) for source in job.sources)
    # Loading initialises the adapters' layers with torch's generator before their weights
    # arrive; seeding again here makes DARE's random pruning depend on the seed alone.
    torch.manual_seed(job.seed)
    try:
        model.add_weighted_adapter(
            adapter_names, weights, MERGED, combination_type=options.combination_type,
            svd_rank=options.svd_rank, density=options.density_for_peft(),
            majority_sign_method=options.majority_sign_method,
            # only the first svd_rank singular vectors are kept: the thin SVD gives the
            # same ones without the full square factors
            svd_full_matrices=False,
        )
    except (ValueError, TypeError, RuntimeError) as error:
        ranks = {source.name: adapter_config(source).get("r") for source in job.sources}
        detail = (" (ranks: " + ", ".join(f"{name!r} r={r}" for name, r in ranks.items()) + ")"
                  if len(set(ranks.values())) > 1 else "")
        raise ValueError(f"cannot merge {names} with combination_type "
                         f"{options.combination_type!r}: {error}{detail}") from error
    # peft saves an adapter not named "default" into a folder of its name
    model.save_pretrained(job.output_dir, selected_adapters=[MERGED], safe_serialization=True)
    return job.output_dir / MERGED


class MergeTransform(harness.Transform):
    Options = MergeOptions
    combines = True

    @classmethod
    def check_sources(cls, options: MergeOptions, count: int) -> None:
        if options.weights is not None and len(options.weights) != count:
            raise ValueError(f"'weights' lists {len(options.weights)} numbers; give one per "
                             "source variant")

    def apply(self, job: TransformJob) -> TransformResult:
        check_sources(job.sources)
        if self.options.weights is not None and len(self.options.weights) != len(job.sources):
            raise ValueError(
                f"merge has {len(self.options.weights)} weights for {len(job.sources)} "
                "variants (" + ", ".join(repr(s.name) for s in job.sources) + "); give one each")
        # peft's adapter names are module keys: the variants' names ("sft@step20") may not be
        adapter_names = [f"source{i}" for i in range(len(job.sources))]
        return TransformResult("adapter", merge_adapters(job, self.options, adapter_names))


@harness.hookimpl
def harness_register_transforms(register):
    register("merge", MergeTransform)
