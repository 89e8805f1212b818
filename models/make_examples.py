"""Write the sample watermarked product photos in examples/watermarked/.

Each is an MIT-licensed GroceryStoreDataset "iconic" photo from the held-out split (never
seen in training), upscaled onto an 800 px white studio canvas and watermarked by
`models.synth.watermark_image`. Run: `python -m models.make_examples [--data DIR]`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

from clearmark.models.scenes import DEFAULT_DATA, photo_list, read_rgb
from clearmark.models.synth import watermark_image

OUT = Path(__file__).resolve().parent.parent / "examples"
MARKS = [["tiled"], ["text", "corner"], ["logo", "url"], ["cjk"]]


def on_canvas(photo: np.ndarray, size: int = 800) -> np.ndarray:
    """The photo scaled to fit 85 % of a white `size` x `size` canvas, centred."""
    h, w = photo.shape[:2]
    s = 0.85 * size / max(h, w)
    small = cv2.resize(photo, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    return canvas


def main(data_dir: Path = DEFAULT_DATA) -> list[Path]:
    photos = photo_list(str(data_dir), "iconic", "eval")[: len(MARKS)]
    (OUT / "watermarked").mkdir(parents=True, exist_ok=True)
    written = []
    for i, (path, kinds) in enumerate(zip(photos, MARKS)):
        rgb = on_canvas(read_rgb(path))
        out, _ = watermark_image(rgb, np.random.default_rng([3, i]), kinds=kinds, quality=None)
        dest = OUT / "watermarked" / f"{i + 1:02d}-{'-'.join(kinds)}-{path.stem}.jpg"
        cv2.imwrite(str(dest), cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        written.append(dest)
    shutil.copyfile(Path(data_dir) / "grocery" / "LICENSE", OUT / "LICENSE-grocery.txt")
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    for p in main(ap.parse_args().data):
        print(p)
