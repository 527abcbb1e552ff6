"""Put hand-written rows where ``datasets.load_dataset("<org>/<name>", config)`` finds them
offline, so that lm-eval tasks given by name run here without a hub.

With ``HF_DATASETS_OFFLINE=1``, datasets (5.x) does not contact the hub and falls back to a
dataset prepared earlier in ``HF_DATASETS_CACHE``:
``<cache>/<org>___<name>/<config>/<version>/<hash>/`` holding ``dataset_info.json`` and one
Arrow stream file per split, ``<name>-<split>.arrow``. This module writes exactly that. The
environment it returns must be set before datasets is imported (a subprocess).
"""

from __future__ import annotations

from pathlib import Path


def install_offline_dataset(root: Path, repo_id: str, config: str,
                            splits: dict[str, list[dict]]) -> dict[str, str]:
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from datasets.naming import camelcase_to_snakecase

    home = Path(root).resolve() / "hf_home"
    env = {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
           "HF_DATASETS_CACHE": str(home / "datasets"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    *org, name = repo_id.split("/")
    snake = camelcase_to_snakecase(name)
    folder = Path(env["HF_DATASETS_CACHE"], "___".join([*org, snake]), config, "0.0.0", "offline")
    folder.mkdir(parents=True, exist_ok=True)
    features, split_dict = None, datasets.SplitDict(dataset_name=snake)
    for split, rows in splits.items():
        table = datasets.Dataset.from_list(rows, features=features)
        features = table.features  # one schema for every split
        with ArrowWriter(features=features, path=str(folder / f"{snake}-{split}.arrow")) as writer:
            writer.write_table(table.data.table)
            count, size = writer.finalize()
        split_dict.add(datasets.SplitInfo(name=split, num_bytes=size, num_examples=count,
                                          dataset_name=snake))
    datasets.DatasetInfo(features=features, splits=split_dict, dataset_name=snake,
                         config_name=config, version="0.0.0").write_to_directory(str(folder))
    return env


# Six grade-school science items in ARC's schema, written for this project.
ARC_ITEMS = [
    ("Which of these is a mammal?", ["Shark", "Dolphin", "Trout", "Octopus"], "B"),
    ("What does a plant need to make food?", ["Sunlight", "Sand", "Plastic", "Salt"], "A"),
    ("What is frozen water called?", ["Steam", "Fog", "Ice", "Dew"], "C"),
    ("Which planet do we live on?", ["Mars", "Venus", "Jupiter", "Earth"], "D"),
    ("Which tool is used to measure temperature?", ["Ruler", "Thermometer", "Scale", "Clock"], "B"),
    ("What force pulls objects toward Earth?", ["Gravity", "Magnetism", "Friction", "Wind"], "A"),
]


def arc_rows() -> list[dict]:
    return [{"id": f"arc-{i}", "question": question,
             "choices": {"text": choices, "label": ["A", "B", "C", "D"]}, "answerKey": key}
            for i, (question, choices, key) in enumerate(ARC_ITEMS)]
