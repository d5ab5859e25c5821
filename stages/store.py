"""store: every image that params curate.sources and pool name -> data/store (content-addressed, decode-checked,
normalised to RGB) with data/store/index.parquet, metrics/store.json.

Each file enters once, however many sources name it: later stages reference images by the
store path and sha256 the index gives for the file a source names. Nothing is published when
one image is refused (a file that does not decode, a path outside its source's folder, ...).
"""

from __future__ import annotations

from pathlib import Path

from mmloop import config, sources, stage
from mmloop.io import atomic_path, progress, write_json
from mmloop.store import ImageStore

PARAMS = ("curate.sources", "pool", "store")
DATA_ROOT = Path("data")
OUTPUT = DATA_ROOT / "store"
INPUTS = ("data/images",)  # the embedded world's images, which its default sources name


def param_deps(params: config.Params) -> list[str]:
    """The files and folders the params name: editing one makes the stage stale."""
    files = [path for source in params.curate.sources for path in source.files]
    folders = [source.image_folder for source in params.curate.sources if source.image_folder]
    return list(dict.fromkeys([*files, *folders, *params.pool.files]))


def main() -> None:
    params = stage.begin("store", PARAMS, param_deps=param_deps, preload=["PIL"])
    references = [ref for source in params.curate.sources for ref in sources.image_references(source, DATA_ROOT)]
    references += sources.image_references(params.pool, DATA_ROOT)
    settings = params.store
    with atomic_path(OUTPUT, directory=True) as folder:
        store = ImageStore(folder, prefix=OUTPUT.name, max_pixels=settings.max_pixels, link=settings.link)
        for ref in progress(references, desc="store"):
            store.add(ref.path, ref.where)
        store.write_index()
    summary = store.summary()
    write_json("metrics/store.json", summary)
    converted = ", ".join(f"{kind} {count}" for kind, count in summary["converted"].items()) or "none"
    print(f"store: {len(references)} image references, {summary['images']} files, {summary['stored']} stored "
          f"({summary['linked']} linked, {summary['copied']} copied, {summary['encoded']} re-encoded; "
          f"converted: {converted})")


if __name__ == "__main__":
    main()
