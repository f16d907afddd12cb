"""What is in a model artifact, for ``segray model info``: read from its small files and the
safetensors header, so an S3 artifact of any size answers without its weights being downloaded."""

from __future__ import annotations

import json
import struct
from typing import Any

from segray import storage
from segray.models.artifact import CONFIG, META, RECIPE, WEIGHTS, ArtifactError, model_id, read_json, read_task
from segray.models.preprocessing import Preprocessing


def weights_summary(uri: str) -> dict[str, Any]:
    """Tensors, parameters and bytes of the artifact's safetensors file, from its header only."""
    target = storage.join(uri, WEIGHTS)
    fs, path = storage.resolve(target)
    try:
        with fs.open_input_file(path) as f:
            size = f.size()
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100_000_000:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
    except FileNotFoundError as e:
        raise ArtifactError(f"{uri}: no {WEIGHTS} in the artifact") from e
    except (ValueError, struct.error) as e:
        raise ArtifactError(f"{target}: not a valid safetensors file ({e})") from e
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    params = 0
    for v in tensors.values():
        count = 1
        for d in v["shape"]:
            count *= int(d)
        params += count
    return {"file": WEIGHTS, "bytes": size, "tensors": len(tensors), "parameters": params}


def model_info(uri: str) -> dict[str, Any]:
    """The artifact's record (``segray.json``), builder config, weights summary and training recipe."""
    meta = read_json(uri, META)
    config = read_json(uri, CONFIG)
    try:
        pre = Preprocessing.from_dict(meta["preprocessing"])
        mid = model_id(str(meta["name"]), str(meta["weights_sha256"]), pre)
    except (KeyError, ValueError) as e:
        raise ArtifactError(f"{uri}/{META}: malformed ({e})") from e
    recipe_uri = storage.join(uri, RECIPE)
    metrics = dict(meta.get("metrics", {}))
    metrics.pop("recipe", None)  # shown once, as recipe.yaml
    return {
        "uri": uri,
        "model_id": mid,
        **{k: v for k, v in meta.items() if k != "metrics"},
        "task": read_task(meta, uri),
        "encoder": config.get("encoder_name"),
        "config": {k: v for k, v in config.items() if not k.startswith("_")},
        "weights": weights_summary(uri),
        "metrics": metrics,
        "recipe": storage.read_bytes(recipe_uri).decode() if storage.exists(recipe_uri) else None,
    }


def format_info(info: dict[str, Any]) -> str:
    """The info as a person reads it: one line per fact, a class table, then the recipe."""
    pre, lm, w, m = info["preprocessing"], info["label_map"], info["weights"], info["metrics"]
    extra = {k: v for k, v in info["config"].items() if k not in ("encoder_name", "encoder_weights", "classes")}
    instance = info.get("task") == "instance"
    back = "boxes and masks mapped back" if instance else "masks resized back"
    lines = [
        f"model          {info['model_id']}",
        f"artifact       {info['uri']}",
        "task           "
        + ("instance (objects: class, score, box, mask)" if instance else "semantic (a class per pixel)"),
        f"architecture   {info['arch']}, {'backbone' if instance else 'encoder'} {info['encoder']}"
        + (f" ({', '.join(f'{k}={v}' for k, v in sorted(extra.items()) if v is not None)})" if extra else ""),
        f"input          {pre['height']}x{pre['width']} (HxW): frames are resized to it, {back} "
        f"to the frame's size" + ("; flip-averaged" if pre.get("hflip_average") else ""),
        *_normalisation_lines(pre),
        f"weights        {w['file']}: {w['parameters']:,} parameters in {w['tensors']} tensors, "
        f"{w['bytes'] / 1e6:.1f} MB, sha256 {info['weights_sha256']}",
        f"encoder start  {info.get('encoder_weights') or m.get('init') or 'not recorded'}",
        f"saved          {info.get('saved_at', 'not recorded')}",
    ]
    if "val_miou" in m:
        lines.append(
            f"val metrics    mIoU {m['val_miou']:.4f}, pixel accuracy {m.get('val_pixel_accuracy', float('nan')):.4f}"
            f" at epoch {m.get('epoch')} of {m.get('epochs')}"
            f" ({m.get('val_data', '?')}, {m.get('val_pairs', '?')} frames)"
        )
    if "val_mask_ap" in m:
        lines.append(
            f"val metrics    mask AP {m['val_mask_ap']:.4f}, AP50 {m.get('val_mask_ap50', float('nan')):.4f}, "
            f"AP75 {m.get('val_mask_ap75', float('nan')):.4f} at epoch {m.get('epoch')} of {m.get('epochs')}"
        )
    if m.get("train_data"):
        lines.append(f"trained on     {m['train_data']} ({m.get('train_pairs', '?')} frames), run {m.get('run')}")
    iou = m.get("val_ap_per_class" if instance else "val_iou", {})
    ignore = lm.get("ignore")
    lines += [
        "",
        f"classes ({len(lm['classes'])}, label map {lm['name']!r}):",
        f"   id  name                 colour       {'val AP' if instance else 'val IoU'}",
    ]
    for c in lm["classes"]:
        r, g, b = c["color"]
        score = f"{iou[c['name']]:.4f}" if c["name"] in iou else ""
        lines.append(f"  {c['id']:>3}  {c['name']:<20} #{r:02x}{g:02x}{b:02x}      {score}")
    if ignore:
        r, g, b = ignore["color"]
        lines.append(f"  {ignore['id']:>3}  {ignore['name']:<20} #{r:02x}{g:02x}{b:02x}      (ignored)")
    recipe = info.get("recipe")
    lines += ["", "training recipe (recipe.yaml):" if recipe else "training recipe: none (not made by segray train)"]
    if recipe:
        lines += ["  " + line for line in recipe.rstrip().splitlines()]
    return "\n".join(lines)


def _normalisation_lines(pre: dict[str, Any]) -> list[str]:
    """RGB models: one line (0-1 scale). Band models: the bands, then each band's mean and std."""
    bands = pre.get("bands") or []
    if not bands:
        return [f"normalisation  mean {pre['mean']}, std {pre['std']} (RGB, 0-1 scale)"]
    width = max(len(b) for b in bands)
    return [
        f"bands          {len(bands)} input channels, in this order: {', '.join(bands)}",
        "normalisation  per band, in the scenes' raw units:",
        *(f"  {b:<{width}}  mean {m:g}, std {s:g}" for b, m, s in zip(bands, pre["mean"], pre["std"], strict=True)),
    ]
