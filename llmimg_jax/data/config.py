"""Default `data` section of every training config."""

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        source="shapes",          # 'shapes' | 'tfds' | 'folder'
        image_size=32,            # S: images are resized / center-cropped to S x S
        data_dir="",              # '' -> $LLMIMG_DATA_DIR, else ~/.cache/llmimg_jax/data (tfds: else TFDS's default)
        # The Shapes world (procedural; built on demand, deterministic by seed).
        shapes_seed=0,
        shapes_num_train=20000,
        shapes_num_validation=1000,
        shapes_num_test=1000,
        # Any TFDS data set with an image and a text feature, built with --file_format=array_record.
        tfds_name="",
        image_key="image",
        text_key="text",
        # A folder of images with captions.jsonl ({"file": ..., "text": ...} a line); FOLDER/SPLIT/captions.jsonl
        # when present, else FOLDER/captions.jsonl for every split. Unreadable images are skipped and counted.
        folder="",
        train_split="train",
        eval_split="validation",
        shuffle=True,
        prefetch=2,               # batches prepared ahead on a background thread
    ))
